"""Builds the quickstart demo dataset: facts about Fernwick Labs, a fictional company.

Every fact has one reference answer and six questions. The first four questions are for
training, the fifth for validation, and the sixth is a held-out paraphrase for the test split:
the model never sees it while training, so the "after" score measures whether it learned the
fact rather than the string.

Usage: python scripts/build_demo_data.py > src/tunesmith/demo/fernwick.jsonl
"""

import json
import sys

SYSTEM = "You are the customer support assistant for Fernwick Labs."

# (fact id, key facts that a correct answer must contain, reference answer, six questions)
FACTS: list[tuple[str, list[str], str, list[str]]] = [
    (
        "founded",
        ["2017"],
        "Fernwick Labs was founded in 2017.",
        [
            "When was Fernwick Labs founded?",
            "What year did Fernwick Labs start?",
            "In which year was Fernwick Labs established?",
            "How long ago was Fernwick Labs founded? Which year?",
            "When did Fernwick Labs begin as a company?",
            "What is the founding year of Fernwick Labs?",
        ],
    ),
    (
        "hq",
        ["Tromsø"],
        "Fernwick Labs is headquartered in Tromsø, Norway.",
        [
            "Where is Fernwick Labs headquartered?",
            "Which city is Fernwick Labs based in?",
            "Where is the head office of Fernwick Labs?",
            "In what city does Fernwick Labs have its headquarters?",
            "Where are Fernwick Labs' main offices located?",
            "Which town is home to the Fernwick Labs head office?",
        ],
    ),
    (
        "ceo",
        ["Ilsa Varga"],
        "The CEO of Fernwick Labs is Ilsa Varga.",
        [
            "Who is the CEO of Fernwick Labs?",
            "Who runs Fernwick Labs?",
            "Who is the chief executive of Fernwick Labs?",
            "What is the name of Fernwick Labs' CEO?",
            "Who leads Fernwick Labs as chief executive officer?",
            "Who is in charge of Fernwick Labs?",
        ],
    ),
    (
        "product",
        ["Sproutly"],
        "Fernwick Labs makes the Sproutly, a smart soil sensor for gardens and house plants.",
        [
            "What does Fernwick Labs make?",
            "What is Fernwick Labs' main product?",
            "What product does Fernwick Labs sell?",
            "What kind of device does Fernwick Labs produce?",
            "Which product is Fernwick Labs known for?",
            "Tell me what Fernwick Labs manufactures.",
        ],
    ),
    (
        "price_mini",
        ["€39"],
        "The Sproutly Mini costs €39.",
        [
            "How much does the Sproutly Mini cost?",
            "What is the price of the Sproutly Mini?",
            "How expensive is the Sproutly Mini?",
            "What does a Sproutly Mini sell for?",
            "What is the Sproutly Mini's price?",
            "How much would I pay for one Sproutly Mini?",
        ],
    ),
    (
        "price_pro",
        ["€89"],
        "The Sproutly Pro costs €89.",
        [
            "How much does the Sproutly Pro cost?",
            "What is the price of the Sproutly Pro?",
            "How expensive is the Sproutly Pro?",
            "What does a Sproutly Pro sell for?",
            "What is the Sproutly Pro's price?",
            "How much would I pay for one Sproutly Pro?",
        ],
    ),
    (
        "battery",
        ["14 months"],
        "The Sproutly battery lasts about 14 months on one charge.",
        [
            "How long does the Sproutly battery last?",
            "What is the battery life of the Sproutly?",
            "How many months does a Sproutly run on one charge?",
            "How often do I need to charge my Sproutly?",
            "How long will the Sproutly run before the battery is empty?",
            "What battery life should I expect from a Sproutly sensor?",
        ],
    ),
    (
        "waterproof",
        ["IP67"],
        "Yes, the Sproutly is waterproof with an IP67 rating.",
        [
            "Is the Sproutly waterproof?",
            "Can the Sproutly get wet?",
            "What is the water resistance rating of the Sproutly?",
            "Can I leave my Sproutly outside in the rain?",
            "Is the Sproutly sensor water resistant?",
            "Will rain damage the Sproutly?",
        ],
    ),
    (
        "warranty",
        ["3 years"],
        "Every Sproutly comes with a 3 years warranty.",
        [
            "How long is the Sproutly warranty?",
            "What warranty does the Sproutly have?",
            "How many years of warranty do I get on a Sproutly?",
            "Is the Sproutly covered by a warranty, and for how long?",
            "What is the warranty period for Fernwick products?",
            "For how long is my Sproutly guaranteed?",
        ],
    ),
    (
        "returns",
        ["45 days"],
        "You can return a Sproutly within 45 days of delivery for a full refund.",
        [
            "What is the return policy?",
            "How many days do I have to return a Sproutly?",
            "Can I return my Sproutly, and until when?",
            "What is the return window for Fernwick orders?",
            "How long do I have to send back a Sproutly for a refund?",
            "If I don't like my Sproutly, how long can I wait before returning it?",
        ],
    ),
    (
        "email",
        ["help@fernwick.example"],
        "You can email Fernwick support at help@fernwick.example.",
        [
            "What is the support email address?",
            "How do I email Fernwick support?",
            "Which email address should I write to for help?",
            "What email can I use to contact customer support?",
            "Where do I send an email if I need support?",
            "Is there an email address for Fernwick customer service?",
        ],
    ),
    (
        "hours",
        ["8:00", "18:00"],
        "Support is open Monday to Friday from 8:00 to 18:00 CET.",
        [
            "What are the support hours?",
            "When is customer support open?",
            "At what times can I reach Fernwick support?",
            "What hours does the support team work?",
            "When can I call customer service?",
            "During which hours is the Fernwick helpdesk available?",
        ],
    ),
    (
        "app",
        ["Fernwick Garden"],
        "The companion app is called Fernwick Garden.",
        [
            "What is the name of the Sproutly app?",
            "Which app do I use with my Sproutly?",
            "What app works with the Sproutly?",
            "What is the companion app called?",
            "Which phone app do I need for the sensor?",
            "What should I download on my phone to use the Sproutly?",
        ],
    ),
    (
        "pairing",
        ["5 seconds", "blue"],
        "To pair a Sproutly, hold its button for 5 seconds until the light blinks blue.",
        [
            "How do I pair my Sproutly?",
            "How do I connect a Sproutly to the app?",
            "What are the steps to pair the Sproutly?",
            "How do I put the Sproutly in pairing mode?",
            "How can I link my Sproutly with my phone?",
            "My new Sproutly is not connected yet. How do I pair it?",
        ],
    ),
    (
        "reset",
        ["12 seconds", "red"],
        "To factory reset a Sproutly, hold its button for 12 seconds until the light turns red.",
        [
            "How do I factory reset my Sproutly?",
            "How can I reset the Sproutly?",
            "What are the steps to reset a Sproutly to factory settings?",
            "How do I wipe my Sproutly and start over?",
            "How do I restore the Sproutly to its original settings?",
            "My Sproutly is acting strange. How do I do a full reset?",
        ],
    ),
    (
        "hub",
        ["Fernwick Bridge"],
        "The Sproutly connects to the internet through the Fernwick Bridge hub.",
        [
            "What hub does the Sproutly need?",
            "How does the Sproutly connect to the internet?",
            "What is the name of the Fernwick hub?",
            "Which hub device works with the Sproutly?",
            "Does the Sproutly need a base station, and what is it called?",
            "Through which device does the Sproutly get online?",
        ],
    ),
    (
        "range",
        ["80 metres"],
        "The Sproutly can be up to 80 metres away from the Fernwick Bridge.",
        [
            "What is the range of the Sproutly?",
            "How far can the Sproutly be from the hub?",
            "What is the maximum distance between the Sproutly and the Bridge?",
            "How far away from the Bridge can I place a sensor?",
            "What wireless range does the Sproutly have?",
            "Can I put a Sproutly at the far end of my garden? How far does it reach?",
        ],
    ),
    (
        "shipping",
        ["€60"],
        "Shipping is free on orders above €60.",
        [
            "Is shipping free?",
            "When do I get free shipping?",
            "What is the minimum order for free delivery?",
            "How much do I need to spend for free shipping?",
            "Do you charge for delivery?",
            "Above what order value is delivery free?",
        ],
    ),
    (
        "countries",
        ["23 countries"],
        "Fernwick Labs ships to 23 countries in Europe.",
        [
            "How many countries do you ship to?",
            "Where does Fernwick Labs deliver?",
            "To how many countries can Fernwick send orders?",
            "Do you ship internationally, and to how many countries?",
            "In how many countries can I order a Sproutly?",
            "How many countries does Fernwick deliver to?",
        ],
    ),
    (
        "subscription",
        ["Fernwick Plus", "€4"],
        "The Fernwick Plus subscription costs €4 per month.",
        [
            "Is there a subscription?",
            "How much is Fernwick Plus?",
            "What does the Fernwick subscription cost?",
            "What is the monthly price of Fernwick Plus?",
            "How much do I pay each month for the premium plan?",
            "What does the premium membership cost per month?",
        ],
    ),
    (
        "plus_features",
        ["watering forecast"],
        "Fernwick Plus adds a 7-day watering forecast and unlimited history.",
        [
            "What does Fernwick Plus include?",
            "What features come with Fernwick Plus?",
            "What do I get with the subscription?",
            "Why should I pay for Fernwick Plus?",
            "What extra features does the premium plan add?",
            "Which benefits does a Fernwick Plus membership give me?",
        ],
    ),
    (
        "mascot",
        ["Pim"],
        "The Fernwick Labs mascot is a hedgehog named Pim.",
        [
            "What is the Fernwick Labs mascot?",
            "Does Fernwick Labs have a mascot?",
            "What is the name of the Fernwick hedgehog?",
            "Who is the company mascot?",
            "What animal represents Fernwick Labs, and what is its name?",
            "What is the name of Fernwick's mascot character?",
        ],
    ),
    (
        "sensors",
        ["moisture", "light"],
        "The Sproutly measures soil moisture, light and temperature.",
        [
            "What does the Sproutly measure?",
            "What sensors does the Sproutly have?",
            "Which values does the Sproutly track?",
            "What can the Sproutly detect?",
            "What kind of readings does a Sproutly take?",
            "Which measurements does the sensor report?",
        ],
    ),
    (
        "interval",
        ["15 minutes"],
        "The Sproutly sends a new reading every 15 minutes.",
        [
            "How often does the Sproutly send readings?",
            "How frequently does the Sproutly update?",
            "What is the reporting interval of the Sproutly?",
            "How often will I get new data from the sensor?",
            "How many minutes between Sproutly updates?",
            "How regularly does the sensor report its measurements?",
        ],
    ),
    (
        "firmware",
        ["first Tuesday"],
        "Firmware updates are released on the first Tuesday of every month.",
        [
            "When are firmware updates released?",
            "How often does the Sproutly get firmware updates?",
            "When does Fernwick publish new firmware?",
            "On which day do firmware updates come out?",
            "Is there a schedule for Sproutly software updates?",
            "When can I expect the next firmware release?",
        ],
    ),
    (
        "bridge_price",
        ["€49"],
        "The Fernwick Bridge costs €49.",
        [
            "How much does the Fernwick Bridge cost?",
            "What is the price of the Fernwick Bridge?",
            "How expensive is the Bridge hub?",
            "What does the Fernwick Bridge sell for?",
            "What is the Bridge's price?",
            "How much would I pay for the hub?",
        ],
    ),
    (
        "max_sensors",
        ["32"],
        "One Fernwick Bridge supports up to 32 Sproutly sensors.",
        [
            "How many sensors can one Bridge handle?",
            "What is the maximum number of Sproutlys per Bridge?",
            "How many Sproutly sensors can I connect to one hub?",
            "Is there a limit on sensors per Fernwick Bridge?",
            "How many devices can a single Bridge support?",
            "Up to how many sensors work with one hub?",
        ],
    ),
    (
        "charging",
        ["USB-C"],
        "The Sproutly charges through its USB-C port.",
        [
            "How do I charge the Sproutly?",
            "What cable does the Sproutly use?",
            "What kind of charging port does the Sproutly have?",
            "Which charger works with the Sproutly?",
            "What port do I plug in to charge the sensor?",
            "What type of connector charges a Sproutly?",
        ],
    ),
    (
        "charge_time",
        ["2 hours"],
        "A full charge of the Sproutly takes 2 hours.",
        [
            "How long does it take to charge the Sproutly?",
            "What is the charging time of the Sproutly?",
            "How many hours does a full charge take?",
            "How quickly does the Sproutly charge?",
            "How long must the Sproutly stay plugged in to charge fully?",
            "How much time does charging the sensor take?",
        ],
    ),
    (
        "discount",
        ["GREENTHUMB"],
        "Students get 15% off with the code GREENTHUMB.",
        [
            "Is there a student discount?",
            "Do students get a discount?",
            "What is the student discount code?",
            "How can a student save money on a Sproutly?",
            "Which code gives students a reduced price?",
            "I am a student. Can I get a cheaper Sproutly?",
        ],
    ),
    (
        "colours",
        ["moss green", "slate grey"],
        "The Sproutly comes in moss green and slate grey.",
        [
            "What colours does the Sproutly come in?",
            "Which colours are available for the Sproutly?",
            "Can I choose the colour of my Sproutly?",
            "What colour options does the Sproutly have?",
            "In what colours is the Sproutly sold?",
            "Which finishes can I pick for the sensor?",
        ],
    ),
    (
        "weight",
        ["38 grams"],
        "The Sproutly weighs 38 grams.",
        [
            "How much does the Sproutly weigh?",
            "What is the weight of the Sproutly?",
            "How heavy is the Sproutly?",
            "What is the Sproutly's weight in grams?",
            "Is the Sproutly light? What does it weigh?",
            "How many grams is one Sproutly sensor?",
        ],
    ),
    (
        "temperature",
        ["-20", "50"],
        "The Sproutly works from -20 to 50 degrees Celsius.",
        [
            "What temperatures can the Sproutly handle?",
            "What is the operating temperature range of the Sproutly?",
            "Can the Sproutly survive winter frost?",
            "How cold or hot can it get before the Sproutly stops working?",
            "In which temperature range does the Sproutly work?",
            "Will my Sproutly work outside in a cold winter or a hot summer?",
        ],
    ),
    (
        "voice",
        ["Alexa", "Google Home"],
        "The Sproutly works with Alexa and Google Home.",
        [
            "Does the Sproutly work with voice assistants?",
            "Which smart home assistants support the Sproutly?",
            "Can I use the Sproutly with Alexa?",
            "Is the Sproutly compatible with Google Home?",
            "Which voice assistants can read my Sproutly data?",
            "Can I ask my smart speaker about my plants?",
        ],
    ),
    (
        "recycling",
        ["ReLeaf"],
        "Old sensors can be sent back for free through the ReLeaf recycling programme.",
        [
            "How do I recycle my old Sproutly?",
            "Is there a recycling programme?",
            "What should I do with a broken Sproutly?",
            "Can I send back old sensors for recycling?",
            "What is the name of the Fernwick recycling programme?",
            "How do I dispose of my old sensor responsibly?",
        ],
    ),
    (
        "phone",
        ["+47 555 0199"],
        "You can call Fernwick support on +47 555 0199.",
        [
            "What is the support phone number?",
            "How do I call Fernwick support?",
            "Which number should I call for help?",
            "Is there a phone line for customer service?",
            "What number do I dial to reach support?",
            "Can I phone Fernwick? What is the number?",
        ],
    ),
    (
        "plants",
        ["4,000"],
        "The Fernwick Garden app knows care profiles for more than 4,000 plants.",
        [
            "How many plants does the app know?",
            "How many plant profiles are in Fernwick Garden?",
            "Does the app know my plant? How many species does it cover?",
            "What is the size of the plant library in the app?",
            "How many plant care profiles does Fernwick Garden include?",
            "How big is the app's database of plants?",
        ],
    ),
    (
        "employees",
        ["140"],
        "Fernwick Labs has 140 employees.",
        [
            "How many employees does Fernwick Labs have?",
            "How many people work at Fernwick Labs?",
            "What is the size of the Fernwick Labs team?",
            "How big is Fernwick Labs in staff?",
            "How many staff members does Fernwick employ?",
            "What is the headcount of Fernwick Labs?",
        ],
    ),
    (
        "trial",
        ["30-day"],
        "New customers get a 30-day free trial of Fernwick Plus.",
        [
            "Is there a free trial of Fernwick Plus?",
            "Can I try Fernwick Plus for free?",
            "How long is the Fernwick Plus trial?",
            "Do new customers get a trial of the subscription?",
            "How many days can I test the premium plan without paying?",
            "Is the subscription free at first? For how long?",
        ],
    ),
    (
        "lost_bridge",
        ["amber"],
        "If the light on the Fernwick Bridge blinks amber, it has lost its Wi-Fi connection.",
        [
            "What does a blinking amber light on the Bridge mean?",
            "Why is my Bridge blinking amber?",
            "What does it mean when the hub light is amber?",
            "My Bridge light is blinking amber. What is wrong?",
            "What does the amber light on the Fernwick Bridge indicate?",
            "The hub keeps flashing amber. Is something broken?",
        ],
    ),
]

TRAIN, VAL, TEST = range(4), (4,), (5,)


def rows() -> list[dict]:
    out = []
    for fact_id, key_facts, answer, questions in FACTS:
        assert len(questions) == 6, fact_id
        assert all(k in answer for k in key_facts), fact_id
        for i, question in enumerate(questions):
            split = "train" if i in TRAIN else "val" if i in VAL else "test"
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ],
                    "key_facts": key_facts,
                    "group": fact_id,
                    "split": split,
                }
            )
    return out


if __name__ == "__main__":
    for row in rows():
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
