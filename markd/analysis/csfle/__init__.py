"""CSFLE (FLE1): `jsonSchema` rules as a scheme of the analysis core.

`jsonschema` parses a schema into the core's tree, `rules` reads the command's schema parameters,
`placeholders` builds FLE1 placeholders, `policy` says what deterministic and random fields allow,
`errors` holds mongocryptd's CSFLE codes and messages.
"""
