"""Deterministic data sets: Company contacts, Person contacts linked to them, and the awkward
cases a sync must handle (no email, the same email twice, privacy-blocked)."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from contactsync.emulators.bc.state import EMPTY_DATE, BcState, Company

FIRST = ["Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kara", "Liam", "Mia", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara"]
LAST = ["Andersen", "Brown", "Carvalho", "Dubois", "Eriksen", "Fischer", "García", "Hansen",
        "Ito", "Jensen", "Kowalski", "Larsen", "Müller", "Nguyen", "O'Brien", "Petersen",
        "Quist", "Rossi", "Schmidt", "Tanaka"]
CITIES = [("Seattle", "WA", "98101", "US"), ("Redmond", "WA", "98052", "US"),
          ("Atlanta", "GA", "31772", "US"), ("Chicago", "IL", "61236", "US"),
          ("København", "", "1000", "DK"), ("London", "", "W2 8HG", "GB")]
TITLES = ["Purchasing Manager", "Sales Rep", "CEO", "Accountant", "Engineer", ""]


class SeedSpec(BaseModel):
    persons: int = Field(default=100, ge=0, le=1_000_000)
    companies: int = Field(default=10, ge=0, le=100_000, description="Company-type contacts")
    without_email: int = Field(default=0, ge=0)
    duplicate_emails: int = Field(default=0, ge=0, description="persons reusing another's email")
    privacy_blocked: int = Field(default=0, ge=0)
    company: str | None = Field(default=None, description="company id or name; default first")
    random_seed: int = 0


def _blank(contact_id: str, number: str) -> dict[str, Any]:
    return {
        "id": contact_id, "number": number, "type": "Person", "displayName": "",
        "jobTitle": "", "companyNumber": "", "companyName": "", "contactBusinessRelation": "None",
        "addressLine1": "", "addressLine2": "", "city": "", "state": "", "country": "",
        "postalCode": "", "phoneNumber": "", "mobilePhoneNumber": "", "email": "", "website": "",
        "searchName": "", "privacyBlocked": False, "taxRegistrationNumber": "",
        "lastInteractionDate": EMPTY_DATE, "lastModifiedDateTime": "",
    }


def seed(state: BcState, spec: SeedSpec) -> dict[str, Any]:
    """Insert the data set without notifications; timestamps end at about now."""
    rng = random.Random(spec.random_seed)
    company: Company = state.company(spec.company) if spec.company else state.default_company()
    total = spec.companies + spec.persons
    with state.lock:
        ms = max(state.last_ms + 1, int(time.time() * 1000) - total)
        start_number = company.next_number

        def next_id() -> str:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))

        def next_number() -> str:
            while True:
                number = f"CT{company.next_number:06d}"
                company.next_number += 1
                if number not in company.by_number:
                    return number

        company_rows: list[dict[str, Any]] = []
        for i in range(spec.companies):
            city, st, zip_, country = CITIES[i % len(CITIES)]
            data = _blank(next_id(), next_number())
            name = f"{LAST[i % len(LAST)]} {['Inc.', 'A/S', 'GmbH', 'Ltd'][i % 4]} {i + 1}"
            data.update(type="Company", displayName=name, searchName=name.upper(),
                        companyName=name, city=city, state=st, postalCode=zip_,
                        country=country, phoneNumber=f"+1 425 555 {i % 10000:04d}",
                        email=f"info@company{i + 1}.example", website=f"www.company{i + 1}.example")
            data["companyNumber"] = data["number"]
            state.insert_seeded(company, data, ms)
            ms += 1
            company_rows.append(data)

        emails: list[str] = []
        for i in range(spec.persons):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            city, st, zip_, country = rng.choice(CITIES)
            data = _blank(next_id(), next_number())
            name = f"{first} {last}"
            email = f"{first}.{last}.{i + 1}@contoso.example".lower().replace("'", "")
            email = email.encode("ascii", "ignore").decode()
            # The awkward cases come last, so duplicates have earlier addresses to copy.
            from_end = spec.persons - i
            if from_end <= spec.without_email:
                email = ""
            elif from_end <= spec.without_email + spec.duplicate_emails and emails:
                email = rng.choice(emails).upper()  # same address, other case
            elif from_end <= spec.without_email + spec.duplicate_emails + spec.privacy_blocked:
                data["privacyBlocked"] = True
            if email and not data["privacyBlocked"]:
                emails.append(email.lower())
            data.update(displayName=name, searchName=name.upper(), email=email, city=city,
                        state=st, postalCode=zip_, country=country,
                        jobTitle=rng.choice(TITLES),
                        phoneNumber=f"+1 425 555 {rng.randrange(10000):04d}",
                        mobilePhoneNumber=f"+1 206 555 {rng.randrange(10000):04d}",
                        addressLine1=f"{rng.randrange(1, 999)} Main Street")
            if company_rows:
                owner = company_rows[i % len(company_rows)]
                data["companyNumber"] = owner["number"]
                data["companyName"] = owner["displayName"]
            state.insert_seeded(company, data, ms)
            ms += 1
    return {"company": company.id, "companies": spec.companies, "persons": spec.persons,
            "first_number": f"CT{start_number:06d}", "total": len(company.contacts)}
