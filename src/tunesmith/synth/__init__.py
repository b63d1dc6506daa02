"""Synthetic data: pairs grounded in domain documents, and paraphrases of existing rows, written by a
teacher model, filtered, tagged `origin: synthetic`, and stored as ordinary dataset versions."""

from tunesmith.synth.run import Balance, SynthResult, augment, synthesize
from tunesmith.synth.teacher import Teacher, TeacherError, load_teacher

__all__ = ["Balance", "SynthResult", "Teacher", "TeacherError", "augment", "load_teacher", "synthesize"]
