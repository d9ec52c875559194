"""Word lists behind the format tasks: common facts a small instruct model may know.

Written into the module (nothing is downloaded). Each capital in ONE_WORD_CAPITALS is one word;
aliases are other accepted spellings of a gold word.
"""

from __future__ import annotations

# (thing, its colour)
COLOURS: tuple[tuple[str, str], ...] = (
    ("a banana", "yellow"), ("grass", "green"), ("the sky on a clear day", "blue"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("a carrot", "orange"), ("a lemon", "yellow"),
    ("milk", "white"), ("a strawberry", "red"), ("a lime", "green"), ("chocolate", "brown"),
    ("a crow", "black"), ("a polar bear", "white"), ("a flamingo", "pink"), ("a pumpkin", "orange"),
    ("a cucumber", "green"), ("blood", "red"), ("an eggplant", "purple"), ("a fire engine", "red"),
    ("a frog", "green"), ("a cherry", "red"), ("salt", "white"), ("soot", "black"),
    ("a swan", "white"), ("a blueberry", "blue"), ("a sunflower", "yellow"), ("spinach", "green"),
    ("a raven", "black"), ("a school bus in the USA", "yellow"), ("a cloud on a sunny day", "white"),
    ("a ripe plum", "purple"),
)  # fmt: skip

# (country, capital, continent)
CAPITALS: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"),
    ("Russia", "Moscow", "Europe"), ("Egypt", "Cairo", "Africa"), ("Canada", "Ottawa", "North America"),
    ("Australia", "Canberra", "Oceania"), ("Greece", "Athens", "Europe"), ("Portugal", "Lisbon", "Europe"),
    ("Austria", "Vienna", "Europe"), ("Ireland", "Dublin", "Europe"), ("Norway", "Oslo", "Europe"),
    ("Sweden", "Stockholm", "Europe"), ("Finland", "Helsinki", "Europe"), ("Denmark", "Copenhagen", "Europe"),
    ("Poland", "Warsaw", "Europe"), ("Hungary", "Budapest", "Europe"), ("Czechia", "Prague", "Europe"),
    ("Turkey", "Ankara", "Asia"), ("Kenya", "Nairobi", "Africa"), ("Peru", "Lima", "South America"),
    ("Chile", "Santiago", "South America"), ("Cuba", "Havana", "North America"),
    ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"), ("Belgium", "Brussels", "Europe"),
    ("the Netherlands", "Amsterdam", "Europe"), ("Switzerland", "Bern", "Europe"),
    ("Iceland", "Reykjavik", "Europe"), ("Nigeria", "Abuja", "Africa"), ("Ghana", "Accra", "Africa"),
    ("Iran", "Tehran", "Asia"), ("Iraq", "Baghdad", "Asia"), ("Indonesia", "Jakarta", "Asia"),
    ("the Philippines", "Manila", "Asia"), ("South Korea", "Seoul", "Asia"),
    ("Colombia", "Bogota", "South America"), ("Venezuela", "Caracas", "South America"),
    ("Morocco", "Rabat", "Africa"), ("Romania", "Bucharest", "Europe"), ("Bulgaria", "Sofia", "Europe"),
    ("Serbia", "Belgrade", "Europe"), ("Croatia", "Zagreb", "Europe"), ("Argentina", "Buenos Aires", "South America"),
    ("India", "New Delhi", "Asia"), ("Mexico", "Mexico City", "North America"),
    ("the United States", "Washington, D.C.", "North America"), ("Brazil", "Brasilia", "South America"),
)  # fmt: skip
ONE_WORD_CAPITALS = tuple(c for c in CAPITALS if len(c[1].split()) == 1 and "," not in c[1])

# (sound, animal, aliases)
ANIMAL_SOUNDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("moo", "cow", ()), ("woof", "dog", ()), ("meow", "cat", ()), ("oink", "pig", ()),
    ("baa", "sheep", ("lamb",)), ("neigh", "horse", ()), ("quack", "duck", ()), ("hiss", "snake", ()),
    ("roar", "lion", ("tiger",)), ("cluck", "chicken", ("hen",)), ("hoot", "owl", ()),
    ("ribbit", "frog", ()), ("buzz", "bee", ()), ("cock-a-doodle-doo", "rooster", ("cockerel",)),
)  # fmt: skip

# (animal with article, legs, legs in words)
LEGS: tuple[tuple[str, int, str], ...] = (
    ("a spider", 8, "eight"), ("a dog", 4, "four"), ("a bird", 2, "two"), ("an ant", 6, "six"),
    ("a cat", 4, "four"), ("a horse", 4, "four"), ("a chicken", 2, "two"), ("a duck", 2, "two"),
    ("a cow", 4, "four"), ("a bee", 6, "six"), ("a crab", 10, "ten"), ("a human", 2, "two"),
    ("a beetle", 6, "six"), ("an elephant", 4, "four"), ("a kangaroo", 2, "two"),
    ("an ostrich", 2, "two"), ("a scorpion", 8, "eight"), ("a lobster", 10, "ten"),
    ("a goat", 4, "four"), ("a fly", 6, "six"),
)  # fmt: skip

# (word, opposite, aliases)
OPPOSITES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hot", "cold", ()), ("big", "small", ("little", "tiny")), ("up", "down", ()), ("fast", "slow", ()),
    ("happy", "sad", ("unhappy",)), ("open", "closed", ("shut",)), ("early", "late", ()),
    ("full", "empty", ()), ("young", "old", ()), ("wet", "dry", ()), ("tall", "short", ()),
    ("strong", "weak", ()), ("rich", "poor", ()), ("love", "hate", ()), ("win", "lose", ()),
    ("day", "night", ()), ("black", "white", ()), ("in", "out", ()), ("loud", "quiet", ("soft",)),
    ("clean", "dirty", ()), ("thick", "thin", ()), ("buy", "sell", ()), ("push", "pull", ()),
    ("first", "last", ()), ("begin", "end", ("finish",)), ("north", "south", ()), ("east", "west", ()),
    ("good", "bad", ("evil",)), ("true", "false", ()), ("above", "below", ("beneath", "under")),
)  # fmt: skip

# (singular, plural, aliases)
PLURALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mouse", "mice", ()), ("child", "children", ()), ("foot", "feet", ()), ("tooth", "teeth", ()),
    ("goose", "geese", ()), ("man", "men", ()), ("woman", "women", ()), ("person", "people", ("persons",)),
    ("ox", "oxen", ()), ("cactus", "cacti", ("cactuses",)), ("knife", "knives", ()), ("leaf", "leaves", ()),
    ("wolf", "wolves", ()), ("sheep", "sheep", ()), ("box", "boxes", ()), ("baby", "babies", ()),
    ("city", "cities", ()), ("fish", "fish", ("fishes",)),
)  # fmt: skip

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip

# (animal, legs, sound or None)
ANIMALS: tuple[tuple[str, int, str | None], ...] = (
    ("cat", 4, "meow"), ("dog", 4, "woof"), ("cow", 4, "moo"), ("pig", 4, "oink"), ("sheep", 4, "baa"),
    ("horse", 4, "neigh"), ("duck", 2, "quack"), ("chicken", 2, "cluck"), ("owl", 2, "hoot"),
    ("frog", 4, "ribbit"), ("lion", 4, "roar"), ("bee", 6, "buzz"), ("spider", 8, None),
    ("ant", 6, None), ("elephant", 4, None), ("kangaroo", 2, None), ("crab", 10, None),
    ("goat", 4, None), ("penguin", 2, None), ("octopus", 8, None), ("snake", 0, "hiss"),
    ("beetle", 6, None), ("giraffe", 4, None), ("ostrich", 2, None), ("mouse", 4, "squeak"),
)  # fmt: skip

# (fruit, colour)
FRUITS: tuple[tuple[str, str], ...] = (
    ("banana", "yellow"), ("strawberry", "red"), ("lime", "green"), ("lemon", "yellow"),
    ("blueberry", "blue"), ("cherry", "red"), ("orange", "orange"), ("plum", "purple"),
    ("raspberry", "red"), ("kiwi", "brown"), ("coconut", "brown"), ("grapefruit", "pink"),
)  # fmt: skip

# (first name, a city) for free-form JSON descriptions whose values are not checked
PEOPLE: tuple[tuple[str, str], ...] = (
    ("Alice", "London"), ("Ben", "Paris"), ("Carla", "Madrid"), ("David", "Berlin"), ("Emma", "Rome"),
    ("Farid", "Cairo"), ("Grace", "Dublin"), ("Hiro", "Tokyo"), ("Ines", "Lisbon"), ("Jack", "Sydney"),
    ("Kemi", "Lagos"), ("Liam", "Toronto"), ("Maya", "Mumbai"), ("Noah", "Chicago"), ("Olga", "Moscow"),
    ("Pedro", "Lima"), ("Rosa", "Mexico City"), ("Sam", "Boston"), ("Tara", "Delhi"), ("Yuki", "Osaka"),
)  # fmt: skip
