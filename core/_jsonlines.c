/* millpond._jsonlines: replace top-level string fields of JSON lines without parsing them into objects.
 *
 * The batch form of the mask transform (transforms.Mask.apply_json_lines) must write, for each line,
 * exactly what orjson.dumps writes for the document with its fields masked. For a line that is already
 * in orjson's own form (no whitespace outside strings, only the escapes orjson writes, integers of at
 * most 18 digits, no float, no repeated key, ASCII), that is the line itself with the masked values'
 * text replaced; this module checks that form in one pass and does the replacing. Any other line (a
 * float, a \u escape, non-ASCII text, a masked field that is not a plain string, ...) goes to the
 * caller's fallback, which parses it, so the output is the same either way; only the cost differs.
 *
 * It also counts the lines of a block (count_lines), which the file source does for every block it reads.
 *
 *   mask_lines(block: bytes, fields: tuple[bytes, ...], cache: dict[bytes, bytes],
 *              replace: Callable[[bytes], bytes], fallback: Callable[[bytes], bytes | None]) -> bytes | None
 *
 * ``block`` is newline-ended lines. ``fields`` the top-level names to mask (plain ASCII, no quote or
 * backslash: the caller checks). For a masked value's text v (the bytes between its quotes, no
 * escapes) the replacement is cache[v], else replace(v), which is stored in ``cache``; it is written
 * as it is (the caller's JSON, quotes included). ``fallback(line)`` returns the output for one line
 * (its newline included), or None to refuse the block: mask_lines then returns None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_KEYS 64
#define MAX_DIGITS 18
#define MAX_FIELDS 16

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Scan;

typedef struct {
    const unsigned char *start;
    Py_ssize_t len;
} Span;

static int scan_value(Scan *s, int depth);

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any of the 8 bytes in w ends a run of ordinary string text: a quote, a backslash, a control
 * character or a non-ASCII byte (the "has a zero byte" / "has a byte below n" tricks; never a false no). */
static inline uint64_t special_byte(uint64_t w)
{
    uint64_t quote = w ^ (ONES * '"'), backslash = w ^ (ONES * '\\');
    return ((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash) | ((w - ONES * 0x20) & ~w) | (w & HIGHS);
}

/* A string in orjson's form at s->p (on its quote); *plain is 0 when it holds an escape. Ordinary text
 * is skipped 8 bytes at a time: it is most of a log line, and a byte at a time was most of the cost. */
static int scan_string(Scan *s, int *plain)
{
    const unsigned char *p = s->p + 1, *end = s->end;
    *plain = 1;
    while (p < end) {
        unsigned char c;
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (special_byte(w) & HIGHS)
                break;
            p += 8;
        }
        if (p >= end)
            break;
        c = *p;
        if (c == '"') {
            s->p = p + 1;
            return 1;
        }
        if (c == '\\') {
            if (p + 1 >= end)
                return 0;
            switch (p[1]) {
            case '"': case '\\': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            default:  /* \u and \/: orjson writes neither for what they could stand for here */
                return 0;
            }
            *plain = 0;
            p += 2;
            continue;
        }
        if (c < 0x20 || c >= 0x80)  /* raw control characters are not JSON; non-ASCII: the fallback */
            return 0;
        p++;
    }
    return 0;
}

static int scan_number(Scan *s)
{
    const unsigned char *p = s->p, *end = s->end, *digits;
    if (p < end && *p == '-')
        p++;
    digits = p;
    if (p >= end || *p < '0' || *p > '9')
        return 0;
    if (*p == '0') {
        p++;
        if (digits != s->p)  /* -0: orjson reads 0 and writes "0" */
            return 0;
    } else {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p - digits > MAX_DIGITS)
        return 0;
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E'))  /* a float: orjson's own digits may differ */
        return 0;
    s->p = p;
    return 1;
}

static int literal(Scan *s, const char *word, Py_ssize_t n)
{
    if (s->end - s->p < n || memcmp(s->p, word, (size_t)n) != 0)
        return 0;
    s->p += n;
    return 1;
}

/* Keys of one object: a repeated one means orjson would write the object without it. */
static int new_key(Span *keys, int *nkeys, const unsigned char *start, Py_ssize_t len)
{
    for (int i = 0; i < *nkeys; i++)
        if (keys[i].len == len && memcmp(keys[i].start, start, (size_t)len) == 0)
            return 0;
    if (*nkeys >= MAX_KEYS)
        return 0;
    keys[*nkeys].start = start;
    keys[*nkeys].len = len;
    (*nkeys)++;
    return 1;
}

static int scan_object(Scan *s, int depth)
{
    Span keys[MAX_KEYS];
    int nkeys = 0, plain;
    if (depth > MAX_DEPTH)
        return 0;
    s->p++;
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 1;
    }
    for (;;) {
        const unsigned char *key = s->p;
        if (s->p >= s->end || *s->p != '"' || !scan_string(s, &plain))
            return 0;
        if (!new_key(keys, &nkeys, key, s->p - key))
            return 0;
        if (s->p >= s->end || *s->p != ':')
            return 0;
        s->p++;
        if (!scan_value(s, depth + 1))
            return 0;
        if (s->p >= s->end)
            return 0;
        if (*s->p == '}') {
            s->p++;
            return 1;
        }
        if (*s->p != ',')
            return 0;
        s->p++;
    }
}

static int scan_array(Scan *s, int depth)
{
    if (depth > MAX_DEPTH)
        return 0;
    s->p++;
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 1;
    }
    for (;;) {
        if (!scan_value(s, depth + 1) || s->p >= s->end)
            return 0;
        if (*s->p == ']') {
            s->p++;
            return 1;
        }
        if (*s->p != ',')
            return 0;
        s->p++;
    }
}

static int scan_value(Scan *s, int depth)
{
    int plain;
    if (s->p >= s->end)
        return 0;
    switch (*s->p) {
    case '"': return scan_string(s, &plain);
    case '{': return scan_object(s, depth);
    case '[': return scan_array(s, depth);
    case 't': return literal(s, "true", 4);
    case 'f': return literal(s, "false", 5);
    case 'n': return literal(s, "null", 4);
    default: return scan_number(s);
    }
}

/* The top-level object of one line: 1 and the masked values' spans (quotes excluded) when the line is
 * in orjson's form and every masked field it has holds a plain string; 0 otherwise. */
static int scan_line(const unsigned char *line, Py_ssize_t len, Span *fields, Py_ssize_t nfields,
                     Span *found, int *nfound)
{
    Span keys[MAX_KEYS];
    int nkeys = 0, plain;
    Scan s = {line, line + len};
    *nfound = 0;
    if (len < 2 || line[0] != '{')
        return 0;
    s.p++;
    if (*s.p == '}')
        return len == 2;
    for (;;) {
        const unsigned char *key = s.p;
        Py_ssize_t klen;
        int masked = 0;
        if (s.p >= s.end || *s.p != '"' || !scan_string(&s, &plain))
            return 0;
        klen = s.p - key;
        if (!new_key(keys, &nkeys, key, klen))
            return 0;
        if (plain)
            for (Py_ssize_t i = 0; i < nfields && !masked; i++)
                masked = fields[i].len == klen - 2 && memcmp(fields[i].start, key + 1, (size_t)(klen - 2)) == 0;
        if (s.p >= s.end || *s.p != ':')
            return 0;
        s.p++;
        if (masked) {
            const unsigned char *value = s.p;
            if (s.p >= s.end || *s.p != '"' || !scan_string(&s, &plain) || !plain)
                return 0;  /* not a plain string: the fallback masks it */
            found[*nfound].start = value + 1;
            found[*nfound].len = s.p - value - 2;
            (*nfound)++;
        } else if (!scan_value(&s, 1)) {
            return 0;
        }
        if (s.p >= s.end)
            return 0;
        if (*s.p == '}')
            return s.p + 1 == s.end;
        if (*s.p != ',')
            return 0;
        s.p++;
    }
}

/* The output, built in the bytes object returned (no second buffer and copy: fresh memory is what costs
 * on a busy machine, each new page a fault). */
typedef struct {
    PyObject *bytes;
    Py_ssize_t len;
    Py_ssize_t cap;
} Out;

static int out_add(Out *o, const void *data, Py_ssize_t n)
{
    if (o->len + n > o->cap) {
        Py_ssize_t cap = o->cap * 2;
        if (cap < o->len + n)
            cap = o->len + n;
        if (_PyBytes_Resize(&o->bytes, cap) < 0)
            return 0;
        o->cap = cap;
    }
    memcpy(PyBytes_AS_STRING(o->bytes) + o->len, data, (size_t)n);
    o->len += n;
    return 1;
}

/* The replacement of one masked value's text: from the cache, or made by ``replace`` and cached. */
static int add_replacement(Out *o, const Span *value, PyObject *cache, PyObject *replace)
{
    PyObject *text = PyBytes_FromStringAndSize((const char *)value->start, value->len);
    PyObject *hit;
    int ok;
    if (text == NULL)
        return 0;
    hit = PyDict_GetItemWithError(cache, text);
    if (hit != NULL) {
        Py_INCREF(hit);
    } else if (PyErr_Occurred()) {
        Py_DECREF(text);
        return 0;
    } else {
        hit = PyObject_CallOneArg(replace, text);
        if (hit == NULL || PyDict_SetItem(cache, text, hit) < 0) {
            Py_XDECREF(hit);
            Py_DECREF(text);
            return 0;
        }
    }
    Py_DECREF(text);
    if (!PyBytes_Check(hit)) {
        PyErr_SetString(PyExc_TypeError, "mask_lines: replace() must return bytes");
        Py_DECREF(hit);
        return 0;
    }
    ok = out_add(o, PyBytes_AS_STRING(hit), PyBytes_GET_SIZE(hit));
    Py_DECREF(hit);
    return ok;
}

/* 1: added; 0: error set; -1: the fallback refused the block */
static int add_fallback(Out *o, const unsigned char *line, Py_ssize_t len, PyObject *fallback)
{
    PyObject *arg = PyBytes_FromStringAndSize((const char *)line, len), *res;
    int ok;
    if (arg == NULL)
        return 0;
    res = PyObject_CallOneArg(fallback, arg);
    Py_DECREF(arg);
    if (res == NULL)
        return 0;
    if (res == Py_None) {
        Py_DECREF(res);
        return -1;
    }
    if (!PyBytes_Check(res)) {
        PyErr_SetString(PyExc_TypeError, "mask_lines: fallback() must return bytes or None");
        Py_DECREF(res);
        return 0;
    }
    ok = out_add(o, PyBytes_AS_STRING(res), PyBytes_GET_SIZE(res));
    Py_DECREF(res);
    return ok;
}

static PyObject *mask_lines(PyObject *module, PyObject *args)
{
    Py_buffer block;
    PyObject *fields_obj, *cache, *replace, *fallback, *result = NULL;
    Span fields[MAX_FIELDS], found[MAX_FIELDS];
    Py_ssize_t nfields;
    Out o = {NULL, 0, 0};
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O!O!OO:mask_lines", &block, &PyTuple_Type, &fields_obj, &PyDict_Type, &cache,
                          &replace, &fallback))
        return NULL;
    nfields = PyTuple_GET_SIZE(fields_obj);
    if (nfields > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "mask_lines: at most %d fields", MAX_FIELDS);
        goto done;
    }
    for (Py_ssize_t i = 0; i < nfields; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields_obj, i);
        if (!PyBytes_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "mask_lines: fields must be bytes");
            goto done;
        }
        fields[i].start = (const unsigned char *)PyBytes_AS_STRING(f);
        fields[i].len = PyBytes_GET_SIZE(f);
    }
    {
        const unsigned char *p = block.buf, *end = p + block.len;
        if (block.len && end[-1] != '\n') {
            PyErr_SetString(PyExc_ValueError, "mask_lines: the block must end with a newline");
            goto done;
        }
        o.cap = block.len + block.len / 4 + 64;
        o.bytes = PyBytes_FromStringAndSize(NULL, o.cap);
        if (o.bytes == NULL)
            goto done;
        while (p < end) {
            const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
            Py_ssize_t len = nl - p;
            int nfound;
            if (scan_line(p, len, fields, nfields, found, &nfound)) {
                const unsigned char *from = p;
                for (int i = 0; i < nfound; i++) {
                    /* the opening quote stays out: the replacement brings its own */
                    if (!out_add(&o, from, found[i].start - 1 - from) || !add_replacement(&o, &found[i], cache, replace))
                        goto done;
                    from = found[i].start + found[i].len + 1;
                }
                if (!out_add(&o, from, nl + 1 - from))
                    goto done;
            } else {
                int ok = add_fallback(&o, p, len, fallback);
                if (ok == 0)
                    goto done;
                if (ok < 0) {
                    result = Py_NewRef(Py_None);
                    goto done;
                }
            }
            p = nl + 1;
        }
        if (_PyBytes_Resize(&o.bytes, o.len) < 0)
            goto done;  /* o.bytes is NULL then */
        result = o.bytes;
        o.bytes = NULL;
    }
done:
    Py_XDECREF(o.bytes);
    PyBuffer_Release(&block);
    return result;
}

/* bytes.count(b"\n") walks every byte; memchr jumps from newline to newline, several times faster on
 * lines of a few hundred bytes (the file source counts each block it reads). */
static PyObject *count_lines(PyObject *module, PyObject *arg)
{
    Py_buffer block;
    const char *p, *end;
    Py_ssize_t n = 0;
    (void)module;
    if (PyObject_GetBuffer(arg, &block, PyBUF_SIMPLE) < 0)
        return NULL;
    p = block.buf;
    end = p + block.len;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    PyBuffer_Release(&block);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"count_lines", count_lines, METH_O, "count_lines(block) -> int: the newlines in block."},
    {"mask_lines", mask_lines, METH_VARARGS,
     "mask_lines(block, fields, cache, replace, fallback) -> bytes | None: top-level string fields of "
     "newline-ended JSON lines replaced, lines not in orjson's form through fallback(line)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsonlines", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jsonlines(void)
{
    return PyModule_Create(&module);
}
