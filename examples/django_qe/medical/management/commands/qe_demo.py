"""`python manage.py qe_demo`: the howto's steps, then one query of each kind, through markd."""

import datetime
from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import DatabaseError

from medical.models import Billing, DateSample, IntegerSample, Patient, PatientRecord


class Command(BaseCommand):
    help = "Save a Patient, find it by its encrypted SSN, run range queries and one refused query."

    def handle(self, *args, **options):
        record = PatientRecord(ssn="123-45-6789", billing=Billing(cc_type="Visa", cc_number="4111111111111111"),
                               bill_amount=Decimal("250.75"))
        Patient(name="John Doe", patient_id=1001, patient_record=record).save()
        patient = Patient.objects.get(patient_record__ssn="123-45-6789")
        self.stdout.write(f"equality on an encrypted field: {patient} ssn={patient.patient_record.ssn}")

        IntegerSample.objects.create(value=5)
        IntegerSample.objects.create(value=10)
        found = sorted(s.value for s in IntegerSample.objects.filter(value__gt=7))
        self.stdout.write(f"range query value__gt=7: {found}")
        DateSample.objects.create(value=datetime.date(2024, 6, 1))
        found = [s.value for s in DateSample.objects.filter(value__range=[datetime.date(2024, 1, 1),
                                                                          datetime.date(2024, 12, 31)])]
        self.stdout.write(f"range query on a date: {found}")

        try:
            list(IntegerSample.objects.order_by("value"))
        except DatabaseError as error:
            self.stdout.write(f"sorting on an encrypted field is refused: {str(error).split(', full error')[0]}")
