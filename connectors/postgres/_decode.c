/*
 * The hot path of the postgres-cdc source: pgoutput Insert, Update and Delete
 * messages straight into the JSON bytes of their record key and value.
 *
 * The source reads a window of changes as the binary COPY of
 *     SELECT lsn, data FROM pg_logical_slot_peek_binary_changes(...)
 * and calls scan() on that buffer. scan() walks the rows; an Insert, an
 * Update without an old tuple (the key did not change) or a Delete of a table
 * that has a codec is rendered here and appended to that table's output
 * columns; every other message (Begin, Commit, Relation, an Update with an old
 * key or row, a change with binary or unchanged TOAST columns, a malformed
 * one) is handed back to Python, which decodes it with pgoutput.py and raises
 * the clear errors. So this file only has to
 * be right for what it takes; everything else keeps one implementation.
 *
 * A codec (built by source.py from the Relation message) is a tuple
 *     (kinds: bytes, names: tuple[bytes], key_index: tuple[int], topic: str,
 *      insert, update and delete templates: tuple)
 * kinds    one byte per column, how its text becomes JSON (KIND_* below,
 *          the same rules as types.py's decoders);
 * names    each column's name already as JSON with its colon: b'"id":';
 * key_index the primary-key columns, in key order (the record key's fields);
 * topic    where the table's records go;
 * templates the value as literal bytes and slot numbers (SLOT_*), rendered by
 *          source.py with orjson from the same dict the Python path builds,
 *          so both paths give the same envelope.
 *
 * outputs maps a topic to a 3-tuple of lists (keys, values, timestamps) of
 * the current transaction; missing entries are created. Python appends the
 * records it decodes to the same lists, so the order within a topic is the
 * order of the stream.
 *
 * COPY binary: an 11-byte signature, int32 flags, int32 extension length
 * (the caller skips that header); then per row int16 field count (-1 ends
 * the data), and per field int32 length (-1 = NULL) and the bytes: here an
 * int64 LSN and the bytea message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { KIND_NUMBER = 'n', KIND_FLOAT = 'f', KIND_STRING = 's', KIND_BOOL = 'b', KIND_JSON = 'j',
       KIND_TIMESTAMP = 't', KIND_TIMESTAMPTZ = 'z', KIND_TIMETZ = 'w' };
enum { SLOT_ROW = 0, SLOT_LSN = 1, SLOT_XID = 2, SLOT_COMMIT_MS = 3, SLOT_NOW_MS = 4, SLOT_OLD = 5 };
/* the items of a codec */
enum { C_KINDS, C_NAMES, C_KEY_INDEX, C_TOPIC, C_INSERT, C_UPDATE, C_DELETE, C_SIZE };

/* 0 = NULL ('n'), else the text value's start and length */
typedef struct {
    const char *start;
    Py_ssize_t length;
} Datum;

typedef struct {
    char *data;
    Py_ssize_t length, capacity;
} Buffer;

static int reserve(Buffer *b, Py_ssize_t extra) {
    if (b->length + extra <= b->capacity)
        return 0;
    Py_ssize_t capacity = b->capacity ? b->capacity : 1024;
    while (capacity < b->length + extra)
        capacity *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int put(Buffer *b, const char *s, Py_ssize_t n) {
    if (reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->length, s, (size_t)n);
    b->length += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* A JSON string as orjson writes it: escapes for '"', '\\' and control
 * characters only (the text is UTF-8: the source checks server_encoding). */
static int put_string(Buffer *b, const char *s, Py_ssize_t n) {
    if (reserve(b, n * 6 + 2) < 0)
        return -1;
    char *p = b->data + b->length;
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = (char)c;
            continue;
        }
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\f': *p++ = 'f'; break;
        case '\n': *p++ = 'n'; break;
        case '\r': *p++ = 'r'; break;
        case '\t': *p++ = 't'; break;
        default:
            *p++ = 'u'; *p++ = '0'; *p++ = '0';
            *p++ = HEX[c >> 4]; *p++ = HEX[c & 15];
        }
    }
    *p++ = '"';
    b->length = p - b->data;
    return 0;
}

/* The last '+' or '-' in s, or -1 (the start of a time zone offset). */
static Py_ssize_t offset_sign(const char *s, Py_ssize_t n) {
    for (Py_ssize_t i = n - 1; i >= 0; i--)
        if (s[i] == '+' || s[i] == '-')
            return i;
    return -1;
}

/* ISO 8601 from PostgreSQL's ISO DateStyle: "2024-01-02 03:04:05+00" ->
 * "2024-01-02T03:04:05+00:00" (types.py's _timestamp / _timestamptz / _timetz). */
static int put_time(Buffer *b, int kind, const char *s, Py_ssize_t n) {
    char text[128];
    if (n > 100)
        return put_string(b, s, n); /* not a time PostgreSQL writes; keep as is */
    memcpy(text, s, (size_t)n);
    if (kind != KIND_TIMETZ && n > 10 && text[10] == ' ')
        text[10] = 'T';
    if (kind != KIND_TIMESTAMP) { /* "+00" -> "+00:00"; "+05:30" and "+00:09:21" stay */
        Py_ssize_t sign = offset_sign(text, n);
        if (sign > (kind == KIND_TIMETZ ? 0 : 10) && n - sign == 3) {
            memcpy(text + n, ":00", 3);
            n += 3;
        }
    }
    return put_string(b, text, n);
}

static int is_word(const char *s, Py_ssize_t n, const char *word) {
    return (Py_ssize_t)strlen(word) == n && memcmp(s, word, (size_t)n) == 0;
}

static int put_value(Buffer *b, int kind, const Datum *d) {
    const char *s = d->start;
    Py_ssize_t n = d->length;
    if (s == NULL)
        return put(b, "null", 4);
    switch (kind) {
    case KIND_NUMBER:
    case KIND_JSON:
        return put(b, s, n);
    case KIND_FLOAT:
        if (is_word(s, n, "NaN") || is_word(s, n, "Infinity") || is_word(s, n, "-Infinity"))
            return put_string(b, s, n);
        if (put(b, s, n) < 0)
            return -1;
        /* a float stays a float in JSON: "100" -> 100.0, as Python's float() and orjson give */
        if (memchr(s, '.', (size_t)n) == NULL && memchr(s, 'e', (size_t)n) == NULL &&
            memchr(s, 'E', (size_t)n) == NULL)
            return put(b, ".0", 2);
        return 0;
    case KIND_BOOL:
        return n == 1 && s[0] == 't' ? put(b, "true", 4) : put(b, "false", 5);
    case KIND_TIMESTAMP:
    case KIND_TIMESTAMPTZ:
    case KIND_TIMETZ:
        return put_time(b, kind, s, n);
    default:
        return put_string(b, s, n);
    }
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t be64(const unsigned char *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* Parse a TupleData of exactly ncols text/null columns into datums.
 * 0 on success, 1 when Python must take the message (anything else). */
static int parse_tuple(const unsigned char *p, Py_ssize_t n, Py_ssize_t ncols, Datum *out) {
    if (n < 2 || (Py_ssize_t)((p[0] << 8) | p[1]) != ncols)
        return 1;
    Py_ssize_t pos = 2;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (pos >= n)
            return 1;
        unsigned char kind = p[pos++];
        if (kind == 'n') {
            out[i].start = NULL;
            out[i].length = 0;
        } else if (kind == 't') {
            if (pos + 4 > n)
                return 1;
            Py_ssize_t length = (Py_ssize_t)be32(p + pos);
            pos += 4;
            if (length > n - pos)
                return 1;
            out[i].start = (const char *)p + pos;
            out[i].length = length;
            pos += length;
        } else {
            return 1; /* 'u' unchanged TOAST, 'b' binary: the Python path */
        }
    }
    return pos == n ? 0 : 1;
}

static int put_row(Buffer *b, PyObject *names, const char *kinds, const Datum *datums, PyObject *index) {
    if (put(b, "{", 1) < 0)
        return -1;
    Py_ssize_t count = index ? PyTuple_GET_SIZE(index) : PyTuple_GET_SIZE(names);
    for (Py_ssize_t j = 0; j < count; j++) {
        Py_ssize_t i = index ? PyLong_AsSsize_t(PyTuple_GET_ITEM(index, j)) : j;
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if ((j && put(b, ",", 1) < 0) || put(b, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)) < 0 ||
            put_value(b, kinds[i], &datums[i]) < 0)
            return -1;
    }
    return put(b, "}", 1);
}

/* What one scan() call renders with: its arguments, the text of the numbers
 * that are the same for every row of the call, and the codec of the last
 * relation seen (inserts come in runs of one table). */
typedef struct {
    PyObject *codecs, *outputs, *commit_ms;
    char xid[24], commit[24], now[24];
    int xid_len, commit_len, now_len;
    uint32_t oid;
    PyObject *codec;   /* strong reference, or NULL */
    PyObject *columns; /* strong reference to outputs[topic of codec], or NULL */
    Buffer key, value;
} Scan;

static int put_lsn(Buffer *b, uint64_t lsn) {
    /* "16/B374D848", quoted: format_lsn() as a JSON string */
    char text[20];
    int n = 0;
    text[n++] = '"';
    for (int half = 1; half >= 0; half--) {
        uint32_t v = (uint32_t)(lsn >> (32 * half));
        int shift = 28;
        while (shift > 0 && (v >> shift) == 0)
            shift -= 4;
        for (; shift >= 0; shift -= 4)
            text[n++] = "0123456789ABCDEF"[(v >> shift) & 15];
        text[n++] = half ? '/' : '"';
    }
    return put(b, text, n);
}

/* SLOT_ROW is the tuple as a row; SLOT_OLD the same tuple as the old row of a
 * delete: only its key columns when Postgres sent the key ('K'). */
static int put_template(Scan *scan, PyObject *template, PyObject *names, const char *kinds, const Datum *datums,
                        uint64_t lsn, PyObject *old_columns) {
    Buffer *b = &scan->value;
    for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(template); t++) {
        PyObject *item = PyTuple_GET_ITEM(template, t);
        int rc;
        if (PyBytes_Check(item)) {
            rc = put(b, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item));
        } else {
            switch (PyLong_AsLong(item)) {
            case SLOT_ROW: rc = put_row(b, names, kinds, datums, NULL); break;
            case SLOT_OLD: rc = put_row(b, names, kinds, datums, old_columns); break;
            case SLOT_LSN: rc = put_lsn(b, lsn); break;
            case SLOT_XID: rc = put(b, scan->xid, scan->xid_len); break;
            case SLOT_COMMIT_MS: rc = put(b, scan->commit, scan->commit_len); break;
            case SLOT_NOW_MS: rc = put(b, scan->now, scan->now_len); break;
            default:
                PyErr_SetString(PyExc_ValueError, "unknown template slot");
                rc = -1;
            }
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Python builds codecs; still, a wrong one must raise, not read out of bounds. */
static int check_codec(PyObject *codec) {
    PyObject *kinds, *names, *key_index;
    if (!PyTuple_Check(codec) || PyTuple_GET_SIZE(codec) != C_SIZE ||
        !PyBytes_Check(kinds = PyTuple_GET_ITEM(codec, C_KINDS)) ||
        !PyTuple_Check(names = PyTuple_GET_ITEM(codec, C_NAMES)) ||
        !PyTuple_Check(key_index = PyTuple_GET_ITEM(codec, C_KEY_INDEX)) ||
        !PyUnicode_Check(PyTuple_GET_ITEM(codec, C_TOPIC)) || !PyTuple_Check(PyTuple_GET_ITEM(codec, C_INSERT)) ||
        !PyTuple_Check(PyTuple_GET_ITEM(codec, C_UPDATE)) || !PyTuple_Check(PyTuple_GET_ITEM(codec, C_DELETE)))
        goto bad;
    Py_ssize_t ncols = PyTuple_GET_SIZE(names);
    if (PyBytes_GET_SIZE(kinds) != ncols)
        goto bad;
    for (Py_ssize_t i = 0; i < ncols; i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, i)))
            goto bad;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(key_index); j++) {
        PyObject *index = PyTuple_GET_ITEM(key_index, j);
        Py_ssize_t i = PyLong_Check(index) ? PyLong_AsSsize_t(index) : -1;
        if (i < 0 || i >= ncols)
            goto bad;
    }
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError, "a codec is (kinds, names, key_index, topic, insert, update and delete "
                                     "templates), one kind and name per column, key indexes among them");
    return -1;
}

/* The (keys, values, timestamps) lists of a topic in this transaction (new reference). */
static PyObject *output_for(PyObject *outputs, PyObject *topic) {
    PyObject *columns = PyDict_GetItemWithError(outputs, topic);
    if (columns != NULL) {
        Py_INCREF(columns);
        return columns;
    }
    if (PyErr_Occurred())
        return NULL;
    columns = Py_BuildValue("(NNN)", PyList_New(0), PyList_New(0), PyList_New(0));
    if (columns != NULL && PyDict_SetItem(outputs, topic, columns) < 0)
        Py_CLEAR(columns);
    return columns;
}

/* Point scan->codec and scan->columns at relation oid's; 0 found, 1 none, -1 error. */
static int select_codec(Scan *scan, uint32_t oid) {
    if (scan->codec != NULL && scan->oid == oid)
        return 0;
    Py_CLEAR(scan->codec);
    Py_CLEAR(scan->columns);
    PyObject *key = PyLong_FromUnsignedLong(oid);
    if (key == NULL)
        return -1;
    PyObject *codec = PyDict_GetItemWithError(scan->codecs, key);
    Py_DECREF(key);
    if (codec == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (check_codec(codec) < 0)
        return -1;
    scan->columns = output_for(scan->outputs, PyTuple_GET_ITEM(codec, C_TOPIC));
    if (scan->columns == NULL)
        return -1;
    Py_INCREF(codec);
    scan->codec = codec;
    scan->oid = oid;
    return 0;
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Render one Insert, Update without an old tuple, or Delete; 0 done, 1 for Python, -1 error.
 * An Update with an old key or row may have changed the key: Python compares them. */
static int change(Scan *scan, const unsigned char *msg, Py_ssize_t n, uint64_t lsn) {
    if (n < 6)
        return 1;
    int template, old_key_only = 0;
    if ((msg[0] == 'I' || msg[0] == 'U') && msg[5] == 'N')
        template = msg[0] == 'I' ? C_INSERT : C_UPDATE;
    else if (msg[0] == 'D' && (msg[5] == 'K' || msg[5] == 'O')) {
        template = C_DELETE;
        old_key_only = msg[5] == 'K';
    } else
        return 1;
    int found = select_codec(scan, be32(msg + 1));
    if (found != 0)
        return found;
    PyObject *names = PyTuple_GET_ITEM(scan->codec, C_NAMES), *key_index = PyTuple_GET_ITEM(scan->codec, C_KEY_INDEX);
    const char *kinds = PyBytes_AS_STRING(PyTuple_GET_ITEM(scan->codec, C_KINDS));
    Py_ssize_t ncols = PyTuple_GET_SIZE(names);
    Datum small[64];
    Datum *datums = ncols <= 64 ? small : PyMem_Malloc(sizeof(Datum) * (size_t)ncols);
    int rc = -1;
    if (datums == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (parse_tuple(msg + 6, n - 6, ncols, datums)) {
        rc = 1;
        goto done;
    }
    scan->key.length = scan->value.length = 0;
    if (put_template(scan, PyTuple_GET_ITEM(scan->codec, template), names, kinds, datums, lsn,
                     old_key_only ? key_index : NULL) < 0)
        goto done;
    PyObject *record_key = Py_None;
    if (PyTuple_GET_SIZE(key_index)) {
        if (put_row(&scan->key, names, kinds, datums, key_index) < 0)
            goto done;
        record_key = PyBytes_FromStringAndSize(scan->key.data, scan->key.length);
        if (record_key == NULL)
            goto done;
    } else {
        Py_INCREF(record_key);
    }
    PyObject *keys = PyTuple_GET_ITEM(scan->columns, 0), *values = PyTuple_GET_ITEM(scan->columns, 1);
    PyObject *timestamps = PyTuple_GET_ITEM(scan->columns, 2);
    /* a delete is followed by a tombstone for its key, so compaction forgets the row */
    int tombstone = template == C_DELETE && record_key != Py_None;
    if (PyList_Append(keys, record_key) < 0 ||
        append_new(values, PyBytes_FromStringAndSize(scan->value.data, scan->value.length)) < 0 ||
        PyList_Append(timestamps, scan->commit_ms) < 0 ||
        (tombstone && (PyList_Append(keys, record_key) < 0 || PyList_Append(values, Py_None) < 0 ||
                       PyList_Append(timestamps, scan->commit_ms) < 0))) {
        Py_DECREF(record_key);
        goto done;
    }
    Py_DECREF(record_key);
    rc = 0;
done:
    if (datums != small)
        PyMem_Free(datums);
    return rc;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    long long xid, now_ms;
    Scan scan = {0};
    if (!PyArg_ParseTuple(args, "y*nO!O!LO!L", &view, &pos, &PyDict_Type, &scan.codecs, &PyDict_Type, &scan.outputs,
                          &xid, &PyLong_Type, &scan.commit_ms, &now_ms))
        return NULL;
    scan.xid_len = snprintf(scan.xid, sizeof scan.xid, "%lld", xid);
    scan.commit_len = snprintf(scan.commit, sizeof scan.commit, "%lld", PyLong_AsLongLong(scan.commit_ms));
    scan.now_len = snprintf(scan.now, sizeof scan.now, "%lld", now_ms);
    const unsigned char *data = view.buf;
    Py_ssize_t end = view.len;
    PyObject *result = NULL;
    if (PyErr_Occurred()) /* commit_ms beyond 64 bits */
        goto done;
    while (1) {
        if (pos < 0 || pos + 2 > end) {
            PyErr_Format(PyExc_ValueError, "COPY data ends inside a row at byte %zd", pos);
            goto done;
        }
        int16_t fields = (int16_t)((data[pos] << 8) | data[pos + 1]);
        if (fields == -1) { /* the trailer */
            result = Py_BuildValue("(nKO)", pos + 2, 0ULL, Py_None);
            goto done;
        }
        Py_ssize_t row = pos;
        if (fields != 2 || pos + 2 + 4 + 8 + 4 > end || be32(data + pos + 2) != 8) {
            PyErr_Format(PyExc_ValueError, "COPY row at byte %zd is not (lsn, data)", pos);
            goto done;
        }
        uint64_t lsn = be64(data + pos + 6);
        Py_ssize_t length = (Py_ssize_t)(int32_t)be32(data + pos + 14);
        pos += 18;
        if (length < 0 || length > end - pos) {
            PyErr_Format(PyExc_ValueError, "COPY row at byte %zd runs past the end of the data", row);
            goto done;
        }
        const unsigned char *msg = data + pos;
        pos += length;
        if (length > 0 && (msg[0] == 'I' || msg[0] == 'U' || msg[0] == 'D')) {
            int rc = change(&scan, msg, length, lsn);
            if (rc < 0)
                goto done;
            if (rc == 0)
                continue;
        }
        PyObject *message = PyBytes_FromStringAndSize((const char *)msg, length);
        if (message != NULL)
            result = Py_BuildValue("(nKN)", pos, (unsigned long long)lsn, message);
        goto done;
    }
done:
    Py_XDECREF(scan.codec);
    Py_XDECREF(scan.columns);
    PyMem_Free(scan.key.data);
    PyMem_Free(scan.value.data);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(buffer, pos, codecs, outputs, xid, commit_ms, now_ms) -> (pos, lsn, message | None)\n\n"
     "Render the changes from COPY row ``pos`` on into ``outputs``; stop at the first other\n"
     "message and return it with its LSN and the position after it, or None at the end."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&module); }
