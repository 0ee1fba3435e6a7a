"""Word lists of the story corpus (stories.py): a broad everyday-English lexicon, so that the compact vocabulary it
induces covers ordinary prompts about people, places, objects, time and countries, not only the IOI templates.

Written for minimech (no external text). Names must be single GPT-2 tokens with a leading space (the IOI metrics
score one token); stories.py filters the lists to those and checks the rest where it matters.
"""

FEMALE_NAMES = """Mary Anna Sarah Lisa Laura Emily Emma Kate Jessica Jennifer Amy Rachel Rebecca Susan Karen Nancy Linda
Helen Alice Grace Julia Maria Sophie Claire Ruth Diana Jane Lucy Anne Elizabeth Catherine Eva Ellen Paula Betty Joan
Amanda Nicole Michelle Kelly Heather Megan Hannah Olivia Chloe Lily Charlotte Rose Sara Jenny Molly Carol Julie Ann
Barbara Patricia Margaret Dorothy Martha Alice Judy Teresa Gloria Sharon Donna Cindy Wendy Tina Eve Victoria Natalie
Samantha Ashley Stephanie Andrea Monica Rita Emma Ella Sophia Isabella Abigail Jill Kim Holly Melissa Amber Erin
Leah Beth Ruby Iris Nina Vera Irene Joy Faith Hope Amelia Caroline Lauren Taylor Brooke Kate Bella Mia Zoe Jasmine
Vanessa Sandra Angela Pamela Carmen Lydia""".split()

MALE_NAMES = """John Tom David James Michael Robert William Richard Thomas Daniel Paul Mark George Steven Kevin Brian
Edward Peter Jack Henry Adam Ryan Jacob Eric Frank Scott Justin Sam Alex Ben Chris Joe Tim Dan Matt Mike Bob Jim Jeff
Gary Carl Roger Martin Andrew Simon Tony Oliver Harry Luke Nathan Sean Patrick Dennis Walter Arthur Louis Victor Ian
Charles Joseph Anthony Donald Kenneth Larry Jerry Raymond Samuel Gregory Frank Jonathan Stephen Aaron Jose Henry
Douglas Peter Kyle Noah Ethan Jeremy Ralph Roy Eugene Louis Philip Bobby Johnny Bruce Russell Alan Wayne Billy
Howard Fred Ray Leo Max Jake Owen Lewis Neil Hugo Felix Oscar Paul Ted Ron Ken Phil Bill Nick Rick Greg Glen Dave
Joel Evan Cole Mason Logan Gavin Marcus Kevin Dylan Colin Craig Ross Grant Ivan Carlos Juan Pedro Mario""".split()

# Everyday nouns, by kind. Places are where people go ("at the {place}"); objects can be given, found and carried.
PLACES = """store park school office library hospital station restaurant beach museum market garden house church cafe
hotel airport bank kitchen farm lake river forest theater zoo gym mall bakery shop club stadium bridge harbor village
city town street road square hall castle tower island mountain hill valley field pool cinema studio factory prison
court camp cabin barn shed yard porch attic basement bedroom bathroom classroom clinic pharmacy gallery concert
festival party wedding meeting game race fair""".split()

OBJECTS = """drink book ball apple ring bone bag pen cup gift box card hat cake flower basket bottle ticket coat phone
map note toy plate shirt camera watch coin necklace sandwich computer snack orange bowl spoon towel key letter
umbrella lamp chair blanket pillow guitar violin piano radio clock candle mirror brush comb wallet purse jacket scarf
glove sock shoe boot belt bracelet doll kite puzzle paint pencil notebook magazine newspaper poster picture photo
painting rope ladder hammer knife fork glass jar mug kettle pan pot bucket shovel bike helmet backpack suitcase
package parcel envelope stamp badge medal trophy shell stone feather leaf seed""".split()

ANIMALS = """dog cat bird horse rabbit duck fox mouse cow pig sheep goat chicken lion tiger bear wolf deer monkey
elephant giraffe zebra snake frog fish whale dolphin shark owl eagle parrot turtle bee spider ant squirrel""".split()

FOODS = """apple sandwich cake pie banana muffin orange cookie bread cheese egg rice soup salad pizza pasta chicken
fish meat potato tomato carrot onion grape lemon peach pear cherry strawberry chocolate candy butter honey milk tea
coffee juice water lunch dinner breakfast""".split()

ROLES = """teacher doctor waiter manager driver nurse clerk guard cook farmer officer student pilot lawyer painter
singer writer baker dancer soldier sailor judge captain king queen prince princess boss coach player reporter
scientist engineer artist actor child baby boy girl man woman lady gentleman stranger visitor neighbor""".split()

RELATIVES = """brother sister mother father friend aunt uncle cousin grandmother grandfather neighbor son daughter
husband wife parents children family teacher""".split()

COLORS = "red blue green yellow white black brown pink purple orange gray golden silver".split()

ADJECTIVES = """small big old new little large tiny huge long short tall young happy sad angry tired hungry thirsty
busy quiet noisy calm warm cold hot cool sunny rainy windy cloudy snowy nice lovely beautiful ugly pretty clean
dirty empty full heavy light dark bright soft hard smooth rough sweet sour fresh strange funny serious kind gentle
brave proud shy lazy clever smart wise silly friendly lonely famous rich poor cheap expensive simple easy difficult
important special favorite wonderful terrible great good bad best worst early late fast slow loud strong weak
careful sick healthy safe dangerous wild open closed broken ready sure free afraid alive asleep awake
named different whole real true false main final""".split()

# (base, past) pairs; the third person "-s" form is made by rule where it is regular.
VERBS = [tuple(p.split("/")) for p in """walk/walked run/ran jump/jumped swim/swam climb/climbed dance/danced
sing/sang play/played read/read write/wrote draw/drew paint/painted cook/cooked bake/baked eat/ate drink/drank
sleep/slept wake/woke sit/sat stand/stood look/looked see/saw watch/watched hear/heard listen/listened talk/talked
speak/spoke say/said tell/told ask/asked answer/answered call/called shout/shouted laugh/laughed smile/smiled
cry/cried wait/waited stay/stayed leave/left arrive/arrived come/came go/went return/returned travel/traveled
drive/drove ride/rode fly/flew visit/visited meet/met find/found lose/lost keep/kept hold/held carry/carried
open/opened close/closed build/built fix/fixed clean/cleaned wash/washed buy/bought sell/sold pay/paid give/gave
take/took bring/brought send/sent throw/threw catch/caught pull/pulled push/pushed help/helped thank/thanked
learn/learned teach/taught study/studied work/worked think/thought know/knew remember/remembered forget/forgot
like/liked love/loved hate/hated want/wanted need/needed hope/hoped try/tried start/started finish/finished
stop/stopped move/moved turn/turned hide/hid show/showed follow/followed win/won fall/fell grow/grew plant/planted
pick/picked choose/chose decide/decided explain/explained agree/agreed invite/invited offer/offered lend/lent
borrow/borrowed share/shared pass/passed hand/handed hug/hugged kiss/kissed wave/waved knock/knocked enter/entered
cross/crossed reach/reached touch/touched feel/felt smell/smelled taste/tasted wear/wore dress/dressed
live/lived die/died marry/married believe/believed understand/understood change/changed save/saved spend/spent
feed/fed wish/wished worry/worried count/counted order/ordered become/became miss/missed repair/repaired
begin/began break/broke make/made get/got put/put cut/cut let/let set/set shut/shut hit/hit bite/bit
celebrate/celebrated check/checked collect/collected complain/complained continue/continued cover/covered
deliver/delivered describe/described drop/dropped enjoy/enjoyed escape/escaped expect/expected fill/filled
guess/guessed happen/happened hurry/hurried join/joined kick/kicked land/landed mention/mentioned notice/noticed
own/owned pack/packed prepare/prepared promise/promised protect/protected rest/rested rain/rained ring/rang
rush/rushed search/searched shake/shook shine/shone shop/shopped skate/skated ski/skied smoke/smoked
snow/snowed sound/sounded spell/spelled steal/stole stick/stuck sting/stung suggest/suggested
surprise/surprised swing/swung test/tested train/trained use/used vote/voted wonder/wondered""".split()]

ADVERBS = """quickly slowly quietly loudly happily sadly carefully suddenly finally soon later again always never
often sometimes usually already still also together alone outside inside away home here there today tonight
yesterday tomorrow early late very really almost just only even""".split()

TIMES = "morning afternoon evening night day week month year weekend holiday summer winter spring autumn".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
NUMBER_WORDS = "one two three four five six seven eight nine ten eleven twelve twenty hundred".split()
WEATHER = "sunny rainy windy cloudy snowy warm cold hot cool foggy".split()

# Nature and town words for the general sentences.
THINGS = """tree flower grass sky sun moon star cloud rain snow wind sea ocean water fire road door window wall
floor roof table bed room car bus train boat plane ship truck money time food music song story game idea question
answer problem reason way life world country city people friend family job work school class lesson test word
name voice face hand head eye hair arm leg foot heart mind body party trip dream news""".split()

PLURALS = """people children friends books apples flowers birds dogs cats boxes cars trees houses shoes clothes
letters cards toys games stories songs pictures eggs cookies students teachers workers visitors animals""".split()

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
Russia|Moscow|Russian|Europe
Turkey|Ankara|Turkish|Asia
Ireland|Dublin|English|Europe
the Czech Republic|Prague|Czech|Europe
the United Kingdom|London|English|Europe
the Netherlands|Amsterdam|Dutch|Europe
Japan|Tokyo|Japanese|Asia
China|Beijing|Chinese|Asia
South Korea|Seoul|Korean|Asia
India|New Delhi|Hindi|Asia
Thailand|Bangkok|Thai|Asia
Vietnam|Hanoi|Vietnamese|Asia
Indonesia|Jakarta|Indonesian|Asia
Iran|Tehran|Persian|Asia
Iraq|Baghdad|Arabic|Asia
Israel|Jerusalem|Hebrew|Asia
Saudi Arabia|Riyadh|Arabic|Asia
Pakistan|Islamabad|Urdu|Asia
Bangladesh|Dhaka|Bengali|Asia
Nepal|Kathmandu|Nepali|Asia
Cambodia|Phnom Penh|Khmer|Asia
Syria|Damascus|Arabic|Asia
Lebanon|Beirut|Arabic|Asia
Egypt|Cairo|Arabic|Africa
Nigeria|Abuja|English|Africa
Kenya|Nairobi|Swahili|Africa
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
Canada|Ottawa|English|North America
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

# Syllables of the made-up towns (two or more GPT-2 tokens each): their facts exist only in this corpus, so a model
# recalls them only by reading the whole name and looking the town up.
TOWN_STARTS = "Bar Cal Dor Fen Gal Hal Kel Lor Mar Nor Pel Quin Ros Sal Tor Val Wex Yor Zan Bel Cor Dun Elm Fal".split()
TOWN_ENDS = "ford wick ton by mouth stead haven field bridge moor dale holm worth gate ley".split()
# What a made-up town is known for (single tokens, leading space) and which country it lies in.
TOWN_PRODUCTS = """cheese bread wine honey apples fish salt glass paper cloth wool pottery clocks boats
shoes hats lamps tea silk""".split()

# Words every English text uses: pronouns, determiners, auxiliaries, prepositions, conjunctions, question words.
FUNCTION_WORDS = """I me my mine you your yours he him his she her hers it its we us our ours they them their theirs
myself yourself himself herself itself ourselves themselves this that these those here there who whom whose which
what when where why how all any both each every few many much more most other some such no nor not only own same so
than too very can could may might must shall should will would do does did done doing have has had having be is am
are was were been being get gets got about above across after against along among around at before behind below
beneath beside between beyond by down during except for from in inside into near of off on onto out outside over
past since through throughout to toward towards under until up upon with within without and but or yet because
although though if unless while whether as like once then also just even still already again ever never always
sometimes often usually perhaps maybe yes no not please thanks thank okay well oh hello goodbye everyone everybody
everything everywhere someone somebody something somewhere anyone anything anywhere nobody nothing nowhere another
next last first second third half whole lot lots enough almost quite rather really""".split()

# More everyday nouns (singular; plurals are made by rule) and verbs' other forms come from stories.forms().
MORE_NOUNS = """minute hour second moment age birthday present holiday movie film show television video computer
internet email message phone number address street city country world map trip journey vacation ticket price
money dollar pound euro cent bill shop market supermarket menu meal dish fruit vegetable meat bread cheese butter
sugar salt pepper oil popcorn snack dessert breakfast lunch dinner kitchen oven fridge sink table chair sofa desk
shelf drawer cupboard door window wall floor ceiling stairs garden yard fence gate key lock light lamp ice snow
rain storm thunder lightning sunshine shade wind fog cloud sky star sun moon planet earth ocean sea coast shore
island mountain hill valley forest wood desert field farm village town capital crown king queen castle army war
peace job office company boss worker team game sport football soccer tennis golf basketball race match player
coach fan club member group crowd class lesson homework exam test grade student pupil teacher school university
college library book page story poem novel word letter language sentence question answer idea plan dream hope
fear love anger joy surprise view picture painting photo camera art music song band concert dance party guest
host gift card flower plant seed leaf branch root grass tree bush apple orange potato tomato coat glove hat
boot shoe sock shirt dress skirt jacket sweater uniform bag pocket wallet coin key taxi bus train plane car
bike boat ship road bridge tunnel station airport hospital doctor nurse medicine health head face eye ear nose
mouth tooth hand arm leg foot finger heart back skin hair blood voice smile tear kiss hug friend enemy stranger piece part side end top bottom middle front color size shape kind sort type
child kid baby boy girl man woman person people family parent mother father son daughter brother sister
husband wife uncle aunt cousin grandmother grandfather neighbor guest bicycle garage corner corn bean noon midnight clock week month
minute weekend factory engine machine tool carpet curtain blanket pillow towel soap toothbrush bottle can
jar basket tray pan pot cup spoon knife fork plate bowl glass napkin radio newspaper magazine report article
river lake pond stream wave beach sand rock stone mud dust smoke fire flame heat warmth weather season
history science math art geography music subject principal police officer firefighter soldier pilot
driver waiter chef baker butcher tailor dentist lawyer judge scientist engineer artist
writer singer actor winner loser champion prize reward rule law government president minister mayor
election vote tax loan business meeting project result cause effect
chance choice decision mistake accident solution trouble danger safety advice secret truth lie
joke fun toy puzzle doll kite balloon candle""".split()

IRREGULAR_PLURALS = {"child": "children", "man": "men", "woman": "women", "person": "people", "foot": "feet",
                     "tooth": "teeth", "mouse": "mice", "sheep": "sheep", "fish": "fish", "knife": "knives",
                     "leaf": "leaves", "wife": "wives", "shelf": "shelves", "life": "lives", "people": "people",
                     "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes"}
