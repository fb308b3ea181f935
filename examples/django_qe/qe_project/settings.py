"""Settings for the markd Queryable Encryption example.

Follows Django MongoDB Backend's Queryable Encryption howto, with one change: query analysis
is done by markd instead of MongoDB's Automatic Encryption Shared Library.  Either in-process,
with the howto's very settings pointed at markd's own mongo_crypt_v1 library
(`crypt_shared_lib_path=markd.crypt_shared.library_path()`, `crypt_shared_lib_required=True`),
or by markd as a mongocryptd-compatible daemon (`mongocryptd_uri` / `mongocryptd_bypass_spawn`).

Environment overrides (all optional):

    MONGODB_URI            the MongoDB deployment (default mongodb://localhost:27017)
    MARKD_CRYPT_SHARED=1   in-process: load markd's mongo_crypt_v1 library (no daemon)
    MARKD_URI              where markd listens (default mongodb://localhost:27020)
    MARKD_SPAWN=1          let pymongo spawn `mongocryptd` (markd's console script) from PATH
                           instead of connecting to an already running markd
    MARKD_SPAWN_PATH       with MARKD_SPAWN=1, the program to spawn (default "mongocryptd")
    MARKD_SPAWN_ARGS       with MARKD_SPAWN=1, more arguments for it (pymongo adds
                           --idleShutdownTimeoutSecs=60 unless given)
    QE_DB_NAME             plain database (default "medical")
    QE_ENCRYPTED_DB_NAME   encrypted database, also holds the key vault (default "medical_encrypted")
    QE_LOCAL_MASTER_KEY    base64 of the 96-byte local KMS master key (default: a development key)
"""

import base64
import os
import shlex

from pymongo.encryption_options import AutoEncryptionOpts
from pymongo.uri_parser import parse_uri

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "markd-example-not-secret")
DEBUG = True
USE_TZ = True
ROOT_URLCONF = "qe_project.urls"

INSTALLED_APPS = [
    "django_mongodb_backend",
    "medical",
]

MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://localhost:27017")
MARKD_URI = os.environ.get("MARKD_URI", "mongodb://localhost:27020")
DB_NAME = os.environ.get("QE_DB_NAME", "medical")
ENCRYPTED_DB_NAME = os.environ.get("QE_ENCRYPTED_DB_NAME", "medical_encrypted")

# Development only: a production deployment keeps its master key in a real KMS (see the howto's
# "Configuring a Key Management Service" section) and never in settings.
DEV_LOCAL_MASTER_KEY = (
    "9HwF+kljd2b28ErZoLcS7/jtMJ4Hvr2BDWjiK6P7KIT690DEqCmDvPQCQMd/2POp"
    "J8+L7vABfZtXcEyXLEEVv2YHpWnTdowi5L+FpezLpPJhNFa7qfoYi79c7Uuxh7HE"
)
LOCAL_MASTER_KEY = base64.b64decode(os.environ.get("QE_LOCAL_MASTER_KEY", DEV_LOCAL_MASTER_KEY))

if os.environ.get("MARKD_CRYPT_SHARED") == "1":
    # In-process: the howto's settings, with markd's library as the shared library.
    import markd.crypt_shared

    query_analysis = {
        "crypt_shared_lib_path": markd.crypt_shared.library_path(),
        "crypt_shared_lib_required": True,
    }
elif os.environ.get("MARKD_SPAWN") == "1":
    # pymongo starts `mongocryptd` from PATH (installing markd puts it there under that name)
    # and connects to it on MARKD_URI's port.
    _, markd_port = parse_uri(MARKD_URI)["nodelist"][0]
    query_analysis = {
        "mongocryptd_uri": MARKD_URI,
        "mongocryptd_spawn_path": os.environ.get("MARKD_SPAWN_PATH", "mongocryptd"),
        "mongocryptd_spawn_args": [f"--port={markd_port}", *shlex.split(os.environ.get("MARKD_SPAWN_ARGS", ""))],
    }
else:
    # markd already runs (systemd unit, container, or `markd --port 27020`).
    query_analysis = {"mongocryptd_uri": MARKD_URI, "mongocryptd_bypass_spawn": True}

DATABASES = {
    "default": {
        "ENGINE": "django_mongodb_backend",
        "HOST": MONGODB_URI,
        "NAME": DB_NAME,
    },
    "encrypted": {
        "ENGINE": "django_mongodb_backend",
        "HOST": MONGODB_URI,
        "NAME": ENCRYPTED_DB_NAME,
        "OPTIONS": {
            "auto_encryption_opts": AutoEncryptionOpts(
                key_vault_namespace=f"{ENCRYPTED_DB_NAME}.__keyVault",
                kms_providers={"local": {"key": LOCAL_MASTER_KEY}},
                **query_analysis,
            ),
        },
    },
}

DATABASE_ROUTERS = [
    "django_mongodb_backend.routers.MongoRouter",
    "medical.routers.EncryptedRouter",
]

DEFAULT_AUTO_FIELD = "django_mongodb_backend.fields.ObjectIdAutoField"
