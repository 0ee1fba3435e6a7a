"""Word lists for the synthetic training corpus (see corpus.py).

Every name, place, object and role is a single GPT-2 token with its leading space (" Mary" -> [5335]); corpus.py
checks this when a Corpus is built, because the IOI metrics score exactly one token. Facts are real-world (the same
lessons also run on real GPT-2); the country list avoids countries whose capital, main language or continent is
disputed or plural, and every capital / language / continent has a distinct first GPT-2 token within its relation.
"""

FEMALE_NAMES = """Mary Anna Sarah Lisa Laura Emily Emma Kate Jessica Jennifer Amy Rachel Rebecca Susan Karen Nancy Linda
Helen Alice Grace Julia Maria Sophie Claire Ruth Diana Jane Lucy Anne Elizabeth Catherine Eva Ellen Paula Betty Joan
Amanda Nicole Michelle Kelly Heather Megan Hannah Olivia Chloe Lily Charlotte""".split()

MALE_NAMES = """John Tom David James Michael Robert William Richard Thomas Daniel Paul Mark George Steven Kevin Brian
Edward Peter Jack Henry Adam Ryan Jacob Eric Frank Scott Justin Sam Alex Ben Chris Joe Tim Dan Matt Mike Bob Jim Jeff
Gary Carl Roger Martin Andrew Simon Tony Oliver Harry Luke Nathan Sean Patrick Dennis Walter Arthur Louis Victor
Ian""".split()

PLACES = """store park school office library hospital station restaurant beach museum market garden house church cafe
hotel airport bank kitchen farm lake river forest theater zoo gym mall bakery shop club stadium""".split()

OBJECTS = """drink book ball apple ring bone bag pen cup gift box card hat cake flower basket bottle ticket coat phone
map note toy plate shirt camera watch coin necklace sandwich computer snack orange bowl spoon towel""".split()

# "The {role} gave ..." in the one-name and not-the-IO variants, and people met in the stories.
ROLES = "teacher doctor waiter manager driver nurse clerk guard cook farmer officer student".split()

# Two adjective lists, because "the store was sunny" and "a crowded day" read wrongly.
DAY_ADJECTIVES = "warm cold sunny rainy windy nice lovely hot".split()
PLACE_ADJECTIVES = "quiet busy crowded empty warm cold noisy calm".split()

# --- narrative building blocks -------------------------------------------------------------------------------------
COLORS = "red blue green yellow white black small big old new".split()
ANIMALS = "dog cat bird horse rabbit duck fox mouse".split()
FOODS = "apple sandwich cake pie banana muffin orange cookie".split()
RELATIVES = "brother sister mother father friend aunt uncle cousin grandmother grandfather neighbor".split()
TIMES = "morning afternoon evening day".split()

# (subject, capital, main language, continent). A leading "the " is part of the subject's phrase, not its name.
COUNTRIES = [tuple(line.split("|")) for line in """France|Paris|French|Europe
Germany|Berlin|German|Europe
Italy|Rome|Italian|Europe
Spain|Madrid|Spanish|Europe
Portugal|Lisbon|Portuguese|Europe
Greece|Athens|Greek|Europe
Poland|Warsaw|Polish|Europe
Sweden|Stockholm|Swedish|Europe
Norway|Oslo|Norwegian|Europe
Finland|Helsinki|Finnish|Europe
Denmark|Copenhagen|Danish|Europe
Hungary|Budapest|Hungarian|Europe
Austria|Vienna|German|Europe
Romania|Bucharest|Romanian|Europe
Iceland|Reykjavik|Icelandic|Europe
Ukraine|Kyiv|Ukrainian|Europe
the Czech Republic|Prague|Czech|Europe
the United Kingdom|London|English|Europe
the Netherlands|Amsterdam|Dutch|Europe
Japan|Tokyo|Japanese|Asia
China|Beijing|Chinese|Asia
South Korea|Seoul|Korean|Asia
India|New Delhi|Hindi|Asia
Thailand|Bangkok|Thai|Asia
Indonesia|Jakarta|Indonesian|Asia
Iran|Tehran|Persian|Asia
Iraq|Baghdad|Arabic|Asia
Saudi Arabia|Riyadh|Arabic|Asia
Pakistan|Islamabad|Urdu|Asia
Bangladesh|Dhaka|Bengali|Asia
Nepal|Kathmandu|Nepali|Asia
Cambodia|Phnom Penh|Khmer|Asia
Syria|Damascus|Arabic|Asia
Lebanon|Beirut|Arabic|Asia
Egypt|Cairo|Arabic|Africa
Nigeria|Abuja|English|Africa
Ethiopia|Addis Ababa|Amharic|Africa
Morocco|Rabat|Arabic|Africa
Ghana|Accra|English|Africa
Tunisia|Tunis|Arabic|Africa
Senegal|Dakar|French|Africa
Sudan|Khartoum|Arabic|Africa
Libya|Tripoli|Arabic|Africa
Angola|Luanda|Portuguese|Africa
Mozambique|Maputo|Portuguese|Africa
Zimbabwe|Harare|English|Africa
Tanzania|Dodoma|Swahili|Africa
the United States|Washington|English|North America
Mexico|Mexico City|Spanish|North America
Cuba|Havana|Spanish|North America
Jamaica|Kingston|English|North America
Brazil|Brasilia|Portuguese|South America
Argentina|Buenos Aires|Spanish|South America
Chile|Santiago|Spanish|South America
Peru|Lima|Spanish|South America
Colombia|Bogota|Spanish|South America
Venezuela|Caracas|Spanish|South America
Uruguay|Montevideo|Spanish|South America
Australia|Canberra|English|Oceania
New Zealand|Wellington|English|Oceania""".splitlines()]
