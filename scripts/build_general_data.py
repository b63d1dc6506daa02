"""Builds the small general instruction set shipped for replay and for the forgetting probe.

Plain general knowledge and everyday instructions, written for this project. Rows marked
`probe` are held out: they are never replayed, so the loss on them measures forgetting.

Usage: python scripts/build_general_data.py > src/tunesmith/demo/general.jsonl
"""

import json
import sys

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What is 12 multiplied by 3?", "12 multiplied by 3 is 36."),
    ("Name the largest planet in our solar system.", "Jupiter is the largest planet in our solar system."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    (
        "What is the boiling point of water at sea level in Celsius?",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    ("Give a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the opposite of 'cold'?", "The opposite of 'cold' is 'hot'."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Sort these numbers from smallest to largest: 9, 2, 7.", "From smallest to largest: 2, 7, 9."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Write a short greeting for a birthday card.", "Happy birthday! Wishing you a wonderful year ahead."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    (
        "Summarise in one sentence: The cat slept all day in the sun by the window.",
        "A cat spent the whole day sleeping in the sunny window.",
    ),
    ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("Name a mammal that can fly.", "The bat is a mammal that can fly."),
    ("What is 100 divided by 4?", "100 divided by 4 is 25."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What do bees make?", "Bees make honey."),
    ("Correct the spelling: 'recieve'.", "The correct spelling is 'receive'."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the main language spoken in Brazil?", "The main language spoken in Brazil is Portuguese."),
    ("Give an example of a renewable energy source.", "Solar power is a renewable energy source."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain on Earth."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Rewrite politely: 'Give me the report.'", "Could you please send me the report?"),
    ("What is 7 plus 8?", "7 plus 8 is 15."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is the past tense of 'run'?", "The past tense of 'run' is 'ran'."),
    ("Name the three primary colours of light.", "The primary colours of light are red, green and blue."),
    (
        "What is the largest desert in the world?",
        "The largest hot desert is the Sahara; Antarctica is the largest overall.",
    ),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What instrument has 88 keys?", "A standard piano has 88 keys."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Convert 2 kilometres to metres.", "2 kilometres is 2000 metres."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What is 9 times 9?", "9 times 9 is 81."),
    ("Name a citrus fruit.", "An orange is a citrus fruit."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
]

PROBE_EVERY = 3  # every third pair is held out as the forgetting probe


def rows() -> list[dict]:
    out = []
    for i, (question, answer) in enumerate(PAIRS):
        out.append(
            {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "use": "probe" if i % PROBE_EVERY == PROBE_EVERY - 1 else "replay",
            }
        )
    return out


if __name__ == "__main__":
    for row in rows():
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
