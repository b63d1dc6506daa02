"""The one error base every stage shares.

`InputError` marks an error in what the user gave (a data file, a row, a column mapping): its
message says what is wrong, where (file:line or field path) and what to do. The CLI prints it and
exits 2, the code for bad input, wherever in a command it is raised.
"""


class InputError(ValueError):
    """What the user gave is wrong; the message names where and the fix."""
