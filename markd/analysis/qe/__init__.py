"""Queryable Encryption (FLE2): `encryptedFields` rules as a scheme of the analysis core.

`fields` parses encryptedFields into the core's tree, `rules` reads `encryptionInformation`,
`placeholders` builds FLE2 placeholders, `ranges` intersects range predicates, `policy` says what
equality, range, text and unindexed fields allow, `errors` holds mongocryptd's QE codes and messages.
"""
