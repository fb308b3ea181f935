"""Send the medical app to the encrypted connection, everything else to the plain one."""

ENCRYPTED_APP = "medical"


class EncryptedRouter:
    def allow_migrate(self, db, app_label, model_name=None, **hints):
        # The medical app's collections live only in the encrypted database...
        if app_label == ENCRYPTED_APP:
            return db == "encrypted"
        # ...and no other app gets collections there.
        if db == "encrypted":
            return False
        return None

    def db_for_read(self, model, **hints):
        if model._meta.app_label == ENCRYPTED_APP:
            return "encrypted"
        return None

    db_for_write = db_for_read
