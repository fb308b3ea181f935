"""Models encrypted with Queryable Encryption; query analysis by markd instead of crypt_shared."""
