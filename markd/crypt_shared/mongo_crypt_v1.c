/* markd's mongo_crypt_v1 library: the C half.
 *
 * libmongocrypt dlopens a library with this ABI (mongo_crypt-v1.h in mongodb/libmongocrypt) for
 * in-process query analysis.  Everything that lives at the C boundary is here, in C: status objects,
 * the library and analyzer handles, versions, the memory handed out (malloc here, free in
 * mongo_crypt_v1_bson_free).  Python is entered in exactly two places, markd_cs_start() (from
 * lib_create) and markd_cs_analyze() (from analyze_query), both `extern "Python"` functions of cffi's
 * embedding mode; what they do is in markd/crypt_shared/embedded.py.  No Python exception can cross
 * back: cffi turns an escaped one into a return value, which becomes a status here.
 *
 * cffi places this file after Python.h and its embedding support, and before the code it generates;
 * markd/crypt_shared/build.py prepends the MARKD_CS_* version macros.
 */

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MARKD_CS_EXPORT __attribute__((visibility("default"), used))

/* mongo_crypt_v1_error, as the header numbers it. */
enum {
    MARKD_CS_SUCCESS = 0,
    MARKD_CS_ERROR_UNKNOWN = -1,
    MARKD_CS_ERROR_ENOMEM = 1,
    MARKD_CS_ERROR_EXCEPTION = 2,
    MARKD_CS_ERROR_LIBRARY_ALREADY_INITIALIZED = 3,
    MARKD_CS_ERROR_LIBRARY_NOT_INITIALIZED = 4,
    MARKD_CS_ERROR_INVALID_LIB_HANDLE = 5,
};

/* mongod's InternalError and BadValue codes, for failures that are not an analysis refusal. */
#define MARKD_CS_CODE_INTERNAL_ERROR 1
#define MARKD_CS_CODE_BAD_VALUE 2

/* What the Python side returns (see embedded.py): 0 is what cffi returns when Python could not start. */
#define MARKD_CS_PYTHON_DID_NOT_RUN 0
#define MARKD_CS_REPLY 1
#define MARKD_CS_FAILED 2

typedef struct mongo_crypt_v1_status {
    int error;
    int code;
    char *explanation; /* malloc'ed, or NULL */
} mongo_crypt_v1_status;

/* Handles carry a tag, so a pointer that is not ours (or no longer ours) is refused, not used. */
#define MARKD_CS_LIB_TAG UINT64_C(0x6d61726b642d6c69)      /* "markd-li" */
#define MARKD_CS_ANALYZER_TAG UINT64_C(0x6d61726b642d7161) /* "markd-qa" */

typedef struct mongo_crypt_v1_lib {
    uint64_t tag;
} mongo_crypt_v1_lib;

typedef struct mongo_crypt_v1_query_analyzer {
    uint64_t tag;
} mongo_crypt_v1_query_analyzer;

/* Filled by the Python side through markd_cs_set_reply / markd_cs_set_error. */
typedef struct {
    uint8_t *data; /* malloc'ed reply document */
    uint32_t size;
    int error;
    int code;
    char *message; /* malloc'ed */
} markd_cs_result;

int markd_cs_start(markd_cs_result *result);
int markd_cs_analyze(const uint8_t *document, uint32_t size, markd_cs_result *result);

/* ---- helpers the Python side calls --------------------------------------------------------- */

static int markd_cs_set_reply(markd_cs_result *result, const char *data, size_t size)
{
    if (size > UINT32_MAX) {
        return -1;
    }
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return -1;
    }
    memcpy(copy, data, size);
    free(result->data);
    result->data = copy;
    result->size = (uint32_t)size;
    return 0;
}

static int markd_cs_set_error(markd_cs_result *result, int error, int code, const char *message)
{
    free(result->message);
    result->error = error;
    result->code = code;
    result->message = strdup(message);
    return result->message == NULL ? -1 : 0;
}

static const char *markd_cs_library_file(void)
{
    Dl_info info;
    if (dladdr((void *)&markd_cs_library_file, &info) && info.dli_fname != NULL) {
        return info.dli_fname;
    }
    return "";
}

/* Whether the process ran Python before it loaded this library (a Python host, e.g. pymongo). */
static int markd_cs_host_ran_python = 0;

static int markd_cs_python_started_here(void)
{
    return !markd_cs_host_ran_python;
}

static const char *markd_cs_built_markd_version(void) { return MARKD_CS_MARKD_VERSION; }
static const char *markd_cs_built_server_version(void) { return MARKD_CS_SERVER_VERSION; }

/* ---- load time ------------------------------------------------------------------------------ */

/* libmongocrypt opens this library RTLD_LOCAL, so in a process without Python the interpreter's
 * symbols would stay private to it, and the first extension module the embedded Python imports
 * (_cffi_backend) could not resolve them.  Re-opening the libpython this library is linked against
 * with RTLD_GLOBAL (RTLD_NOLOAD: only the copy already loaded) makes them visible to it.  The handle
 * is kept on purpose.  In a Python host this finds the interpreter already loaded and changes
 * nothing. */
__attribute__((constructor)) static void markd_cs_on_load(void)
{
    Dl_info info;
    markd_cs_host_ran_python = Py_IsInitialized();
    if (dladdr((void *)&Py_IsInitialized, &info) && info.dli_fname != NULL) {
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    }
}

/* ---- status --------------------------------------------------------------------------------- */

static const char MARKD_CS_NO_MEMORY[] = "markd: out of memory while reporting an error";

static void status_set(mongo_crypt_v1_status *status, int error, int code, const char *explanation)
{
    if (status == NULL) {
        return;
    }
    free(status->explanation);
    status->error = error;
    status->code = code;
    status->explanation = explanation != NULL ? strdup(explanation) : NULL;
}

static void status_clear(mongo_crypt_v1_status *status)
{
    status_set(status, MARKD_CS_SUCCESS, 0, NULL);
}

/* The status for a failed call into Python: the Python side's error, or why there is none. */
static void status_from_result(mongo_crypt_v1_status *status, int returned, const markd_cs_result *result)
{
    if (returned == MARKD_CS_FAILED && result->message != NULL) {
        status_set(status, result->error, result->code, result->message);
    } else if (returned == MARKD_CS_PYTHON_DID_NOT_RUN) {
        status_set(status, MARKD_CS_ERROR_EXCEPTION, MARKD_CS_CODE_INTERNAL_ERROR,
                   "markd: the embedded Python interpreter could not start (its error is on stderr)");
    } else if (returned == MARKD_CS_FAILED) {
        status_set(status, MARKD_CS_ERROR_ENOMEM, MARKD_CS_CODE_INTERNAL_ERROR, MARKD_CS_NO_MEMORY);
    } else {
        status_set(status, MARKD_CS_ERROR_EXCEPTION, MARKD_CS_CODE_INTERNAL_ERROR,
                   "markd: internal error in the embedded Python (its traceback is on stderr)");
    }
}

MARKD_CS_EXPORT mongo_crypt_v1_status *mongo_crypt_v1_status_create(void)
{
    return calloc(1, sizeof(mongo_crypt_v1_status));
}

MARKD_CS_EXPORT void mongo_crypt_v1_status_destroy(mongo_crypt_v1_status *status)
{
    if (status != NULL) {
        free(status->explanation);
        free(status);
    }
}

MARKD_CS_EXPORT int mongo_crypt_v1_status_get_error(const mongo_crypt_v1_status *status)
{
    return status != NULL ? status->error : MARKD_CS_ERROR_UNKNOWN;
}

/* Never NULL: libmongocrypt calls strlen on it, even after a success. */
MARKD_CS_EXPORT const char *mongo_crypt_v1_status_get_explanation(const mongo_crypt_v1_status *status)
{
    if (status == NULL) {
        return "";
    }
    if (status->explanation != NULL) {
        return status->explanation;
    }
    return status->error != MARKD_CS_SUCCESS ? MARKD_CS_NO_MEMORY : "";
}

MARKD_CS_EXPORT int mongo_crypt_v1_status_get_code(const mongo_crypt_v1_status *status)
{
    return status != NULL ? status->code : 0;
}

/* ---- the library ---------------------------------------------------------------------------- */

/* At most one library object at a time, as the header requires. */
static pthread_mutex_t markd_cs_lib_mutex = PTHREAD_MUTEX_INITIALIZER;
static mongo_crypt_v1_lib *markd_cs_the_lib = NULL;

/* Major.minor of the Python this library was compiled against; a host running another one cannot use it. */
#define MARKD_CS_STR(x) #x
#define MARKD_CS_XSTR(x) MARKD_CS_STR(x)
#define MARKD_CS_PYTHON_LINE MARKD_CS_XSTR(PY_MAJOR_VERSION) "." MARKD_CS_XSTR(PY_MINOR_VERSION) "."

static int markd_cs_python_matches(void)
{
    const char *running = Py_GetVersion();
    return running != NULL && strncmp(running, MARKD_CS_PYTHON_LINE, strlen(MARKD_CS_PYTHON_LINE)) == 0;
}

MARKD_CS_EXPORT mongo_crypt_v1_lib *mongo_crypt_v1_lib_create(mongo_crypt_v1_status *status)
{
    mongo_crypt_v1_lib *lib = NULL;
    pthread_mutex_lock(&markd_cs_lib_mutex);
    if (markd_cs_the_lib != NULL) {
        status_set(status, MARKD_CS_ERROR_LIBRARY_ALREADY_INITIALIZED, 0,
                   "markd: a mongo_crypt_v1_lib already exists in this process");
    } else if (markd_cs_host_ran_python && !markd_cs_python_matches()) {
        status_set(status, MARKD_CS_ERROR_EXCEPTION, MARKD_CS_CODE_INTERNAL_ERROR,
                   "markd: this mongo_crypt_v1 library was built for Python " MARKD_CS_PYTHON_LINE
                   "x, but the process runs another Python: use the library of a markd installed "
                   "for this Python");
    } else {
        markd_cs_result result = {0};
        int returned = markd_cs_start(&result);
        if (returned != MARKD_CS_REPLY) {
            status_from_result(status, returned, &result);
        } else if ((lib = calloc(1, sizeof(mongo_crypt_v1_lib))) == NULL) {
            status_set(status, MARKD_CS_ERROR_ENOMEM, MARKD_CS_CODE_INTERNAL_ERROR, "markd: out of memory");
        } else {
            lib->tag = MARKD_CS_LIB_TAG;
            __atomic_store_n(&markd_cs_the_lib, lib, __ATOMIC_RELEASE);
            status_clear(status);
        }
        free(result.data);
        free(result.message);
    }
    pthread_mutex_unlock(&markd_cs_lib_mutex);
    return lib;
}

MARKD_CS_EXPORT int mongo_crypt_v1_lib_destroy(mongo_crypt_v1_lib *lib, mongo_crypt_v1_status *status)
{
    int error = MARKD_CS_SUCCESS;
    pthread_mutex_lock(&markd_cs_lib_mutex);
    if (markd_cs_the_lib == NULL) {
        error = MARKD_CS_ERROR_LIBRARY_NOT_INITIALIZED;
        status_set(status, error, 0, "markd: mongo_crypt_v1_lib_create() has not been called");
    } else if (lib != markd_cs_the_lib) {
        error = MARKD_CS_ERROR_INVALID_LIB_HANDLE;
        status_set(status, error, 0, "markd: not this process's mongo_crypt_v1_lib");
    } else {
        __atomic_store_n(&markd_cs_the_lib, NULL, __ATOMIC_RELEASE);
        lib->tag = 0;
        free(lib);
        status_clear(status);
    }
    pthread_mutex_unlock(&markd_cs_lib_mutex);
    /* The interpreter stays: CPython cannot be finalized and started again safely. */
    return error;
}

MARKD_CS_EXPORT uint64_t mongo_crypt_v1_get_version(void)
{
    return MARKD_CS_VERSION;
}

MARKD_CS_EXPORT const char *mongo_crypt_v1_get_version_str(void)
{
    return MARKD_CS_VERSION_STR;
}

/* ---- analysis ------------------------------------------------------------------------------- */

MARKD_CS_EXPORT mongo_crypt_v1_query_analyzer *mongo_crypt_v1_query_analyzer_create(mongo_crypt_v1_lib *lib,
                                                                                   mongo_crypt_v1_status *status)
{
    if (lib == NULL || lib != __atomic_load_n(&markd_cs_the_lib, __ATOMIC_ACQUIRE) || lib->tag != MARKD_CS_LIB_TAG) {
        status_set(status, MARKD_CS_ERROR_INVALID_LIB_HANDLE, 0, "markd: not this process's mongo_crypt_v1_lib");
        return NULL;
    }
    mongo_crypt_v1_query_analyzer *analyzer = calloc(1, sizeof(mongo_crypt_v1_query_analyzer));
    if (analyzer == NULL) {
        status_set(status, MARKD_CS_ERROR_ENOMEM, MARKD_CS_CODE_INTERNAL_ERROR, "markd: out of memory");
        return NULL;
    }
    analyzer->tag = MARKD_CS_ANALYZER_TAG;
    status_clear(status);
    return analyzer;
}

MARKD_CS_EXPORT void mongo_crypt_v1_query_analyzer_destroy(mongo_crypt_v1_query_analyzer *analyzer)
{
    if (analyzer != NULL) {
        analyzer->tag = 0;
        free(analyzer);
    }
}

/* The command as libmongocrypt would send it to mongocryptd (with $db) in; mongocryptd's reply
 * document out, to be released with mongo_crypt_v1_bson_free.  `ns` is not needed: the command names
 * its database and collection itself. */
MARKD_CS_EXPORT uint8_t *mongo_crypt_v1_analyze_query(mongo_crypt_v1_query_analyzer *analyzer,
                                                      const uint8_t *document, const char *ns, uint32_t ns_len,
                                                      uint32_t *bson_len, mongo_crypt_v1_status *status)
{
    (void)ns;
    (void)ns_len;
    if (bson_len != NULL) {
        *bson_len = 0;
    }
    if (analyzer == NULL || analyzer->tag != MARKD_CS_ANALYZER_TAG) {
        status_set(status, MARKD_CS_ERROR_INVALID_LIB_HANDLE, 0, "markd: not a mongo_crypt_v1_query_analyzer");
        return NULL;
    }
    if (__atomic_load_n(&markd_cs_the_lib, __ATOMIC_ACQUIRE) == NULL) {
        status_set(status, MARKD_CS_ERROR_LIBRARY_NOT_INITIALIZED, 0, "markd: the mongo_crypt_v1_lib was destroyed");
        return NULL;
    }
    if (document == NULL || bson_len == NULL) {
        status_set(status, MARKD_CS_ERROR_EXCEPTION, MARKD_CS_CODE_BAD_VALUE,
                   "markd: analyze_query needs a document and a place for its length");
        return NULL;
    }
    /* A BSON document starts with its int32 length, little-endian, whatever the host's byte order. */
    uint32_t size = (uint32_t)document[0] | (uint32_t)document[1] << 8 | (uint32_t)document[2] << 16
                    | (uint32_t)document[3] << 24;
    if (size < 5 || size > INT32_MAX) {
        status_set(status, MARKD_CS_ERROR_EXCEPTION, 22, "invalid BSON document length");
        return NULL;
    }
    markd_cs_result result = {0};
    int returned = markd_cs_analyze(document, size, &result);
    if (returned == MARKD_CS_REPLY && result.data != NULL) {
        *bson_len = result.size;
        free(result.message);
        status_clear(status);
        return result.data;
    }
    status_from_result(status, returned, &result);
    free(result.data);
    free(result.message);
    return NULL;
}

MARKD_CS_EXPORT void mongo_crypt_v1_bson_free(uint8_t *bson)
{
    free(bson);
}
