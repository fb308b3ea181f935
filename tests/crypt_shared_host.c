/* A C program with no Python of its own: libmongocrypt (linked as a system library) loads markd's
 * mongo_crypt_v1 library as its crypt_shared and encrypts commands with the markings it makes.
 *
 *     cc -o host crypt_shared_host.c $(pkg-config --cflags --libs libmongocrypt)
 *     ./host /path/to/mongo_crypt_v1.so
 *
 * It creates a data key with the local KMS, loads the library through a schema map marking `ssn`
 * deterministic, encrypts a find on `ssn` and an insert, and asks for a range query on `ssn`, which
 * must be refused.  Output, one line each: VERSION <crypt_shared version string>, FIND <encrypted
 * command as canonical extended JSON>, INSERT <the same>, REFUSED <libmongocrypt's message>.
 * Exit 0 only if every step behaved: libmongocrypt never asked for mongocryptd markings (the library
 * made them), the find's value and the insert's came back as deterministic ciphertext (BinData 6,
 * first byte 1), the refusal was an error.
 */

#include <bson/bson.h>
#include <mongocrypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                                          \
    do {                                                                                                   \
        fprintf(stderr, __VA_ARGS__);                                                                      \
        fprintf(stderr, "\n");                                                                             \
        exit(1);                                                                                           \
    } while (0)

static uint8_t master_key[96];

static mongocrypt_binary_t *binary_of(const bson_t *document)
{
    return mongocrypt_binary_new_from_data((uint8_t *)bson_get_data(document), document->len);
}

static void check_crypt(mongocrypt_t *crypt, mongocrypt_status_t *status, const char *what)
{
    mongocrypt_status(crypt, status);
    FAIL("%s failed: %s", what, mongocrypt_status_message(status, NULL));
}

static void check_ctx(mongocrypt_ctx_t *ctx, const char *what)
{
    mongocrypt_status_t *status = mongocrypt_status_new();
    mongocrypt_ctx_status(ctx, status);
    FAIL("%s failed: %s", what, mongocrypt_status_message(status, NULL));
}

static mongocrypt_t *new_crypt(const bson_t *schema_map, const char *crypt_shared_path)
{
    mongocrypt_t *crypt = mongocrypt_new();
    mongocrypt_status_t *status = mongocrypt_status_new();
    mongocrypt_binary_t *key = mongocrypt_binary_new_from_data(master_key, sizeof master_key);
    if (!mongocrypt_setopt_kms_provider_local(crypt, key)) {
        check_crypt(crypt, status, "setting the local KMS key");
    }
    mongocrypt_binary_destroy(key);
    if (schema_map != NULL) {
        mongocrypt_binary_t *map = binary_of(schema_map);
        if (!mongocrypt_setopt_schema_map(crypt, map)) {
            check_crypt(crypt, status, "setting the schema map");
        }
        mongocrypt_binary_destroy(map);
    }
    if (crypt_shared_path != NULL) {
        mongocrypt_setopt_set_crypt_shared_lib_path_override(crypt, crypt_shared_path);
    }
    if (!mongocrypt_init(crypt)) {
        check_crypt(crypt, status, "mongocrypt_init");
    }
    mongocrypt_status_destroy(status);
    return crypt;
}

/* A new data key document, encrypted with the local master key. */
static bson_t *create_data_key(void)
{
    mongocrypt_t *crypt = new_crypt(NULL, NULL);
    mongocrypt_ctx_t *ctx = mongocrypt_ctx_new(crypt);
    bson_t *kek = BCON_NEW("provider", "local");
    mongocrypt_binary_t *kek_binary = binary_of(kek);
    if (!mongocrypt_ctx_setopt_key_encryption_key(ctx, kek_binary) || !mongocrypt_ctx_datakey_init(ctx)) {
        check_ctx(ctx, "datakey init");
    }
    if (mongocrypt_ctx_state(ctx) != MONGOCRYPT_CTX_READY) {
        FAIL("datakey: unexpected state %d", (int)mongocrypt_ctx_state(ctx));
    }
    mongocrypt_binary_t *out = mongocrypt_binary_new();
    if (!mongocrypt_ctx_finalize(ctx, out)) {
        check_ctx(ctx, "datakey finalize");
    }
    bson_t *key = bson_new_from_data(mongocrypt_binary_data(out), mongocrypt_binary_len(out));
    mongocrypt_binary_destroy(out);
    mongocrypt_binary_destroy(kek_binary);
    bson_destroy(kek);
    mongocrypt_ctx_destroy(ctx);
    mongocrypt_destroy(crypt);
    return key;
}

/* Encrypt `command`; NULL and the error message in *error when libmongocrypt refuses it. */
static bson_t *encrypt(mongocrypt_t *crypt, const bson_t *key, const char *command_json, char **error)
{
    bson_error_t parse_error;
    bson_t *command = bson_new_from_json((const uint8_t *)command_json, -1, &parse_error);
    if (command == NULL) {
        FAIL("bad JSON %s: %s", command_json, parse_error.message);
    }
    mongocrypt_ctx_t *ctx = mongocrypt_ctx_new(crypt);
    mongocrypt_binary_t *command_binary = binary_of(command);
    bson_t *result = NULL;
    *error = NULL;
    (void)mongocrypt_ctx_encrypt_init(ctx, "db", -1, command_binary);
    for (;;) {
        mongocrypt_ctx_state_t state = mongocrypt_ctx_state(ctx);
        if (state == MONGOCRYPT_CTX_ERROR) {
            mongocrypt_status_t *status = mongocrypt_status_new();
            mongocrypt_ctx_status(ctx, status);
            *error = strdup(mongocrypt_status_message(status, NULL));
            mongocrypt_status_destroy(status);
            break;
        }
        if (state == MONGOCRYPT_CTX_NEED_MONGO_MARKINGS) {
            FAIL("libmongocrypt asked for mongocryptd markings: the crypt_shared library did not make them");
        } else if (state == MONGOCRYPT_CTX_NEED_MONGO_KEYS) {
            mongocrypt_binary_t *key_binary = binary_of(key);
            if (!mongocrypt_ctx_mongo_feed(ctx, key_binary) || !mongocrypt_ctx_mongo_done(ctx)) {
                check_ctx(ctx, "feeding the key");
            }
            mongocrypt_binary_destroy(key_binary);
        } else if (state == MONGOCRYPT_CTX_READY) {
            mongocrypt_binary_t *out = mongocrypt_binary_new();
            if (!mongocrypt_ctx_finalize(ctx, out)) {
                check_ctx(ctx, "encrypt finalize");
            }
            result = bson_new_from_data(mongocrypt_binary_data(out), mongocrypt_binary_len(out));
            mongocrypt_binary_destroy(out);
            break;
        } else {
            FAIL("encrypt: unexpected state %d", (int)state);
        }
    }
    mongocrypt_binary_destroy(command_binary);
    mongocrypt_ctx_destroy(ctx);
    bson_destroy(command);
    return result;
}

/* The value at a dotted path is deterministic ciphertext: BinData 6 whose first byte is 1. */
static void expect_ciphertext(const bson_t *document, const char *path)
{
    bson_iter_t iter, found;
    bson_subtype_t subtype;
    uint32_t length = 0;
    const uint8_t *data = NULL;
    if (!bson_iter_init(&iter, document) || !bson_iter_find_descendant(&iter, path, &found)
        || !BSON_ITER_HOLDS_BINARY(&found)) {
        FAIL("no binary value at %s", path);
    }
    bson_iter_binary(&found, &subtype, &length, &data);
    if (subtype != BSON_SUBTYPE_ENCRYPTED || length < 2 || data[0] != 1) {
        FAIL("the value at %s is not deterministic ciphertext", path);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        FAIL("usage: %s /path/to/mongo_crypt_v1.so", argv[0]);
    }
    for (size_t i = 0; i < sizeof master_key; i++) {
        master_key[i] = (uint8_t)(i * 7 + 3);
    }
    bson_t *key = create_data_key();
    bson_iter_t iter;
    bson_subtype_t subtype;
    uint32_t id_length = 0;
    const uint8_t *id = NULL;
    if (!bson_iter_init_find(&iter, key, "_id") || !BSON_ITER_HOLDS_BINARY(&iter)) {
        FAIL("the data key has no binary _id");
    }
    bson_iter_binary(&iter, &subtype, &id_length, &id);

    bson_t *schema_map = BCON_NEW("db.coll", "{", "bsonType", "object", "properties", "{", "ssn", "{", "encrypt", "{",
                                  "keyId", "[", BCON_BIN(subtype, id, id_length), "]", "bsonType", "string",
                                  "algorithm", "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic", "}", "}", "}", "}");
    mongocrypt_t *crypt = new_crypt(schema_map, argv[1]);
    const char *version = mongocrypt_crypt_shared_lib_version_string(crypt, NULL);
    if (version == NULL) {
        FAIL("libmongocrypt did not load a crypt_shared library from %s", argv[1]);
    }
    printf("VERSION %s\n", version);

    char *error = NULL;
    bson_t *find = encrypt(crypt, key, "{\"find\": \"coll\", \"filter\": {\"ssn\": \"123-45-6789\"}}", &error);
    if (find == NULL) {
        FAIL("find refused: %s", error);
    }
    expect_ciphertext(find, "filter.ssn.$eq");
    char *json = bson_as_canonical_extended_json(find, NULL);
    printf("FIND %s\n", json);
    bson_free(json);

    bson_t *insert =
        encrypt(crypt, key, "{\"insert\": \"coll\", \"documents\": [{\"name\": \"Ann\", \"ssn\": \"987-65-4321\"}]}",
                &error);
    if (insert == NULL) {
        FAIL("insert refused: %s", error);
    }
    expect_ciphertext(insert, "documents.0.ssn");
    json = bson_as_canonical_extended_json(insert, NULL);
    printf("INSERT %s\n", json);
    bson_free(json);

    bson_t *range = encrypt(crypt, key, "{\"find\": \"coll\", \"filter\": {\"ssn\": {\"$gt\": \"1\"}}}", &error);
    if (range != NULL) {
        FAIL("a range query on a deterministic field was not refused");
    }
    printf("REFUSED %s\n", error);
    free(error);

    bson_destroy(find);
    bson_destroy(insert);
    bson_destroy(schema_map);
    bson_destroy(key);
    mongocrypt_destroy(crypt);
    return 0;
}
