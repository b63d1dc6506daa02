"""Write the tool-calling example set: requests that call one of the offered functions, requests
answered without a call, and conversations that answer from a tool's result.

    python examples/tool_calling/make_set.py [--rows 480] [--seed 7] [--out FILE]

The default output is `tool_calls.jsonl` beside this script.

Every row offers two of the five tools in `tools.json` (always the one a call needs), so a model must pick
the function by name, fill its arguments from the request, and leave the tools alone when none
fits. The rows are OpenAI chat rows (`messages` with `tool_calls` and `tool` messages, `tools`), as
`tunesmith data prepare` reads them.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

# The five functions, in OpenAI's `tools` format: the same file a client would send.
TOOLS: dict[str, dict[str, Any]] = {
    tool["function"]["name"]: tool for tool in json.loads((Path(__file__).parent / "tools.json").read_text())
}
CITIES = ["Paris", "Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Denver", "Cairo", "Dublin", "Hanoi"]
CURRENCIES = {"euros": "EUR", "dollars": "USD", "pounds": "GBP", "yen": "JPY", "francs": "CHF"}
ITEMS = ["apples", "rice", "coffee", "eggs", "milk", "bread", "lemons", "onions"]
MONTHS = {"March": "03", "April": "04", "May": "05", "June": "06", "July": "07"}
CHAT = [
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Say hello in Spanish.", "Hola!"),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("Thanks, that is all for today.", "You're welcome! Have a good day."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Which planet is closest to the sun?", "Mercury is the planet closest to the sun."),
    ("Give me a synonym for happy.", "Joyful is a synonym for happy."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What language is spoken in Brazil?", "Portuguese is spoken in Brazil."),
    ("Can you tell me a fun fact?", "Octopuses have three hearts."),
    ("What is the opposite of cold?", "The opposite of cold is hot."),
    ("Spell the word cat backwards.", "Cat backwards is tac."),
    ("What do bees make?", "Bees make honey."),
]


def weather(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    city = rng.choice(CITIES)
    unit = rng.choice([None, "celsius", "fahrenheit"])
    said = {None: "", "celsius": " in celsius", "fahrenheit": " in fahrenheit"}[unit]
    ask = rng.choice(
        [
            "What's the weather in {c}{u}?",
            "How warm is it in {c} right now{u}?",
            "Weather for {c}{u}, please.",
        ]
    ).format(c=city, u=said)
    degrees = rng.randint(-5, 35) if unit != "fahrenheit" else rng.randint(25, 95)
    result = json.dumps({"city": city, "temperature": degrees, "unit": unit or "celsius", "sky": "clear"})
    reply = f"It is {degrees} degrees {'F' if unit == 'fahrenheit' else 'C'} and clear in {city}."
    return ask, "get_weather", {"city": city, **({"unit": unit} if unit else {})}, result, reply


def currency(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    (a_name, a_code), (b_name, b_code) = rng.sample(sorted(CURRENCIES.items()), 2)
    amount = rng.choice([5, 20, 45, 100, 250, 1200])
    ask = rng.choice(
        ["Convert {n} {a} to {b}.", "How much is {n} {a} in {b}?", "What are {n} {a} worth in {b}?"]
    ).format(n=amount, a=a_name, b=b_name)
    value = round(amount * rng.uniform(0.5, 1.5), 2)
    result = json.dumps({"amount": value, "currency": b_code})
    return (
        ask,
        "convert_currency",
        {"amount": amount, "from_currency": a_code, "to_currency": b_code},
        result,
        f"{amount} {a_code} is about {value} {b_code}.",
    )


def timer(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    minutes = rng.choice([3, 5, 10, 12, 15, 25, 40])
    label = rng.choice([None, "tea", "pasta", "laundry", "break"])
    ask = (
        rng.choice(["Set a timer for {m} minutes.", "Start a {m} minute timer.", "Remind me in {m} minutes."])
        if label is None
        else rng.choice(["Set a {m} minute timer for the {l}.", "Timer for {l}: {m} minutes."])
    ).format(m=minutes, l=label)
    arguments = {"minutes": minutes, **({"label": label} if label else {})}
    return ask, "set_timer", arguments, json.dumps({"ok": True}), f"Your {minutes}-minute timer is running."


def flights(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    origin, destination = rng.sample(CITIES, 2)
    month, number = rng.choice(sorted(MONTHS.items()))
    day = rng.randint(1, 28)
    ask = rng.choice(
        ["Find flights from {o} to {d} on {m} {n}.", "Any flights {o} to {d} on {m} {n}?"]
    ).format(o=origin, d=destination, m=month, n=day)
    date = f"2027-{number}-{day:02d}"
    result = json.dumps({"flights": [{"departs": "09:40", "price": rng.randint(90, 600)}]})
    arguments = {"origin": origin, "destination": destination, "date": date}
    return (
        ask,
        "search_flights",
        arguments,
        result,
        f"There is a flight from {origin} to {destination} at 09:40.",
    )


def shopping(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    item, quantity = rng.choice(ITEMS), rng.choice([None, 2, 3, 6])
    ask = (
        rng.choice(["Add {i} to my shopping list.", "Put {i} on the list."])
        if quantity is None
        else rng.choice(["Add {q} {i} to my shopping list.", "Put {q} {i} on the list."])
    ).format(i=item, q=quantity)
    arguments = {"item": item, **({"quantity": quantity} if quantity else {})}
    return ask, "add_to_list", arguments, json.dumps({"ok": True}), f"Added {item} to your list."


MAKERS = [weather, currency, timer, flights, shopping]


def offered(rng: random.Random, needed: str | None) -> list[dict[str, Any]]:
    names = [needed] if needed else []
    names += rng.sample([n for n in TOOLS if n != needed], 2 - len(names))
    rng.shuffle(names)
    return [TOOLS[n] for n in names]


def row(rng: random.Random, index: int) -> dict[str, Any]:
    kind = index % 6
    if kind == 5:  # answered without a call (questions repeat: the data stage keeps one of each)
        question, answer = rng.choice(CHAT)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": messages, "tools": offered(rng, None)}
    ask, name, arguments, result, reply = MAKERS[kind](rng)
    call = {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    messages = [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    if rng.random() < 0.3:  # the conversation goes on: the tool answers, the assistant reports it
        messages += [
            {"role": "tool", "tool_call_id": call["id"], "content": result},
            {"role": "assistant", "content": reply},
        ]
    return {"messages": messages, "tools": offered(rng, name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("tool_calls.jsonl"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with args.out.open("w") as out:
        for index in range(args.rows):
            out.write(json.dumps(row(rng, index)) + "\n")
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
