"""Texts for the embedding tests: 20 varied sentences (languages, code, numbers) and a small retrieval
set of 10 questions over 30 passages (each question has one passage that answers it)."""

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A kiosk at the airport answers travellers' questions about their gates.",
    "Der Zug nach München fährt um 14:35 Uhr von Gleis 7 ab.",
    "Le musée est fermé le lundi et ouvert de 9 h à 18 h les autres jours.",
    "¿Dónde está la estación de autobuses más cercana?",
    "Il ristorante serve pasta fresca fatta a mano ogni giorno.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "3.14159265358979 is an approximation of pi.",
    "The invoice total is $1,234.56, due on 2024-03-15.",
    "Call +1 (555) 010-2030 between 8am and 5pm.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The Treaty of Westphalia was signed in 1648.",
    "Machine learning models can overfit small training sets.",
    "Please keep your luggage with you at all times.",
    "The Wi-Fi password is printed on the back of your boarding pass.",
    "Water boils at 100 degrees Celsius at sea level.",
    "東京は日本の首都です。",
    "Москва — столица России.",
]

PASSAGES = [
    "Gate B12 is a ten-minute walk from security, past the duty-free shops.",
    "Lost and found is located on the arrivals level next to baggage claim 3.",
    "Free Wi-Fi is available throughout the terminal; connect to the network AIRPORT-FREE.",
    "The airport shuttle to the city centre leaves every 20 minutes from stop 4.",
    "Currency exchange counters are open from 6am to 11pm in the departures hall.",
    "Pharmacies can be found in terminal 1 near gate A3 and in terminal 2 near gate C8.",
    "Smoking is only allowed in the designated outdoor areas outside each terminal.",
    "Passengers may carry liquids in containers of up to 100 ml in a transparent bag.",
    "The prayer room is on the mezzanine floor above the food court.",
    "Charging stations for phones are installed at every gate seating area.",
    "Taxis wait outside the arrivals hall; a ride to downtown costs about 40 euros.",
    "Children under two travel free on domestic flights when seated on a lap.",
    "The VIP lounge offers showers, snacks and quiet rooms for business class passengers.",
    "Wheelchair assistance can be booked at the information desk or with your airline.",
    "Pets must travel in an approved carrier and have a valid health certificate.",
    "Parking level P2 offers long-stay rates of 12 euros per day.",
    "The post office in the terminal sells stamps and ships parcels abroad.",
    "Rental car desks are on the ground floor of the parking garage.",
    "Oversized baggage such as skis and bicycles is dropped off at counter 20.",
    "A medical centre staffed by nurses is open 24 hours near gate D1.",
    "The observation deck on the roof offers views of the runways.",
    "Trains to the main railway station depart from the underground platform every 15 minutes.",
    "Duty-free allowances for alcohol are one litre of spirits per adult.",
    "Security checks open three hours before the first departure of the day.",
    "The children's play area is next to gate B5.",
    "Left luggage lockers cost 8 euros per bag per day.",
    "Flights to London depart from terminal 2, gates C1 to C20.",
    "The food court serves vegetarian, halal and kosher meals.",
    "Tax refunds for tourists are processed at the customs office after security.",
    "A quiet zone without announcements is located near gate E7.",
]

QUESTIONS = [
    "How do I get to gate B12?",  # 0
    "Where can I find my lost wallet?",  # 1
    "Is there free internet?",  # 2
    "How can I get a taxi to downtown?",  # 10
    "Where can I buy medicine?",  # 5
    "How much liquid can I take in my hand luggage?",  # 7
    "Where can I charge my phone?",  # 9
    "Where do I drop off my skis?",  # 18
    "How often do trains go to the railway station?",  # 21
    "Where can I store my bag for a day?",  # 25
]
