"""The howto's Patient / PatientRecord / Billing models, and one model per encrypted field type.

Every `*Sample` model keeps its encrypted data in a field called `value`, so that the errors
MongoDB's query analysis (here: markd) returns name the same field as Django MongoDB Backend's
own encryption tests do.
"""

from django.db import models
from django_mongodb_backend.fields import (
    EmbeddedModelField,
    EncryptedArrayField,
    EncryptedBigIntegerField,
    EncryptedBinaryField,
    EncryptedBooleanField,
    EncryptedCharField,
    EncryptedDateField,
    EncryptedDateTimeField,
    EncryptedDecimalField,
    EncryptedDurationField,
    EncryptedEmailField,
    EncryptedEmbeddedModelArrayField,
    EncryptedEmbeddedModelField,
    EncryptedFloatField,
    EncryptedGenericIPAddressField,
    EncryptedIntegerField,
    EncryptedObjectIdField,
    EncryptedPositiveBigIntegerField,
    EncryptedPositiveIntegerField,
    EncryptedPositiveSmallIntegerField,
    EncryptedSmallIntegerField,
    EncryptedTextField,
    EncryptedTimeField,
    EncryptedURLField,
    EncryptedUUIDField,
)
from django_mongodb_backend.models import EmbeddedModel

EQUALITY = {"queryType": "equality"}
RANGE = {"queryType": "range"}


# --- The howto's models: selected fields of an embedded document are encrypted -------------

class Patient(models.Model):
    name = models.CharField(max_length=255)
    patient_id = models.BigIntegerField()
    patient_record = EmbeddedModelField("PatientRecord")

    def __str__(self) -> str:
        return f"{self.name} ({self.patient_id})"


class PatientRecord(EmbeddedModel):
    # Queryable: Patient.objects.get(patient_record__ssn="123-45-6789")
    ssn = EncryptedCharField(max_length=11, queries=EQUALITY)
    # The whole subdocument is encrypted (unindexed): its fields can't be queried.
    billing = EncryptedEmbeddedModelField("Billing")
    bill_amount = models.DecimalField(max_digits=10, decimal_places=2)


class Billing(EmbeddedModel):
    cc_type = models.CharField(max_length=50)
    cc_number = models.CharField(max_length=20)


# --- Encrypted containers (no `queries` allowed on these) ------------------------------------

class Clinician(EmbeddedModel):
    name = models.CharField(max_length=100)


class CareTeam(models.Model):
    ward = models.CharField(max_length=100)
    members = EncryptedEmbeddedModelArrayField(Clinician)


class DoseSchedule(models.Model):
    doses = EncryptedArrayField(models.IntegerField(), size=5)


# --- Equality-queryable field types -----------------------------------------------------------

class BinarySample(models.Model):
    value = EncryptedBinaryField(queries=EQUALITY)


class BooleanSample(models.Model):
    value = EncryptedBooleanField(queries=EQUALITY)


class CharSample(models.Model):
    value = EncryptedCharField(max_length=255, queries=EQUALITY)
    plain = models.CharField(max_length=255, blank=True)


class EmailSample(models.Model):
    value = EncryptedEmailField(max_length=255, queries=EQUALITY)


class GenericIPAddressSample(models.Model):
    value = EncryptedGenericIPAddressField(queries=EQUALITY)


class ObjectIdSample(models.Model):
    value = EncryptedObjectIdField(queries=EQUALITY)


class TextSample(models.Model):
    value = EncryptedTextField(queries=EQUALITY)


class URLSample(models.Model):
    value = EncryptedURLField(max_length=500, queries=EQUALITY)


class UUIDSample(models.Model):
    value = EncryptedUUIDField(queries=EQUALITY)


# --- Range-queryable field types --------------------------------------------------------------

class BigIntegerSample(models.Model):
    value = EncryptedBigIntegerField(queries=RANGE)


class DateSample(models.Model):
    value = EncryptedDateField(queries=RANGE)


class DateTimeSample(models.Model):
    value = EncryptedDateTimeField(queries=RANGE)


class DecimalSample(models.Model):
    value = EncryptedDecimalField(max_digits=10, decimal_places=2, queries=RANGE)


class DurationSample(models.Model):
    value = EncryptedDurationField(queries=RANGE)


class FloatSample(models.Model):
    value = EncryptedFloatField(queries=RANGE)


class IntegerSample(models.Model):
    value = EncryptedIntegerField(queries=RANGE)


class PositiveBigIntegerSample(models.Model):
    value = EncryptedPositiveBigIntegerField(queries=RANGE)


class PositiveIntegerSample(models.Model):
    value = EncryptedPositiveIntegerField(queries=RANGE)


class PositiveSmallIntegerSample(models.Model):
    value = EncryptedPositiveSmallIntegerField(queries=RANGE)


class SmallIntegerSample(models.Model):
    value = EncryptedSmallIntegerField(queries=RANGE)


class TimeSample(models.Model):
    value = EncryptedTimeField(queries=RANGE)


# --- Plain models in the encrypted database (joins through $lookup) ---------------------------

class Clinic(models.Model):
    name = models.CharField(max_length=255)


class Doctor(models.Model):
    name = models.CharField(max_length=255)
    clinic = models.ForeignKey(Clinic, models.CASCADE)
