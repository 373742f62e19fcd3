/*
 * The audit chain's canonical form (core/audit/chain.py's docstring is the spec) straight from
 * the records section of a RecordBatch v2, without a Python object per record.
 *
 * `millpond verify` spent over half its time decoding every record into a Python object only to
 * take its timestamp, key, value and headers apart again into columns. This module walks the
 * varint records once, cuts them into pieces after each record carrying the `millpond.chain`
 * header, and writes each piece's canonical bytes directly:
 *
 *   u32 n, i64[n] timestamps, i32[n] key lengths, i32[n] value lengths,
 *   i32[n] header-section lengths, keys, values, header sections    (little-endian)
 *
 * A header section is, per header other than `millpond.chain`, u32 len(name) name
 * i32 len(value) value (-1 and no bytes for a null value). chain.py's pure-Python
 * canonical() is the reference; tests/audit/test_chain.py checks both give identical bytes.
 *
 * Record layout (zigzag varints): length, attributes int8, timestamp_delta, offset_delta,
 * key_length (-1 = null), key, value_length (-1 = null), value, header_count, and per header
 * name_length, name, value_length (-1 = null), value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_sha256.h"

static const char CHAIN_HEADER[] = "millpond.chain";
#define CHAIN_HEADER_LEN ((Py_ssize_t)(sizeof(CHAIN_HEADER) - 1))

typedef struct {
    int64_t timestamp;
    int64_t offset_delta;
    const unsigned char *key;
    const unsigned char *value;
    const unsigned char *headers; /* the first header's name length varint */
    int64_t key_len;              /* -1: null */
    int64_t value_len;            /* -1: null */
    int64_t header_count;
    int64_t section_len;          /* bytes of the header section (chain header left out) */
    const unsigned char *link;    /* the last chain header's value, or NULL */
    int64_t link_len;             /* -1: null value; meaningful only when has_link */
    int has_link;
} Rec;

/* A zigzag varint at *p (below end); advances *p. -1 on a truncated or overlong one. */
static int get_varint(const unsigned char **p, const unsigned char *end, int64_t *out) {
    uint64_t v = 0;
    int shift = 0;
    while (*p < end && shift < 64) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
        shift += 7;
    }
    return -1;
}

static char *put_le(char *o, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) {
        *o++ = (char)(v & 0xFF);
        v >>= 8;
    }
    return o;
}

/* timestamps[i] as 8 little-endian bytes at o; NULL with TypeError/OverflowError set when it is
   not an int of 64 bits. */
static char *put_stamp(char *o, PyObject *stamp_obj, Py_ssize_t i) {
    int overflow;
    long long stamp = PyLong_Check(stamp_obj) ? PyLong_AsLongLongAndOverflow(stamp_obj, &overflow) : (overflow = 2, 0);
    if (overflow || (stamp == -1 && PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "timestamps[%zd] must be an int of 64 bits", i);
        return NULL;
    }
    return put_le(o, (uint64_t)stamp, 8);
}

/* Parse one record at *p; 0 on success, -1 (with the reason in *why) when malformed. */
static int parse_record(const unsigned char **p, const unsigned char *end, Rec *r, const char **why) {
    int64_t length, delta;
    if (get_varint(p, end, &length) < 0 || length < 1 || length > end - *p) {
        *why = "record length";
        return -1;
    }
    const unsigned char *q = *p, *rend = *p + length;
    q++; /* record attributes: unused in v2 */
    if (get_varint(&q, rend, &delta) < 0 || get_varint(&q, rend, &r->offset_delta) < 0) {
        *why = "timestamp or offset delta";
        return -1;
    }
    r->timestamp = delta;
    if (get_varint(&q, rend, &r->key_len) < 0 || r->key_len < -1 || r->key_len > rend - q) {
        *why = "key length";
        return -1;
    }
    r->key = q;
    q += r->key_len > 0 ? r->key_len : 0;
    if (get_varint(&q, rend, &r->value_len) < 0 || r->value_len < -1 || r->value_len > rend - q) {
        *why = "value length";
        return -1;
    }
    r->value = q;
    q += r->value_len > 0 ? r->value_len : 0;
    if (get_varint(&q, rend, &r->header_count) < 0 || r->header_count < 0) {
        *why = "header count";
        return -1;
    }
    r->headers = q;
    r->section_len = 0;
    r->has_link = 0;
    for (int64_t h = 0; h < r->header_count; h++) {
        int64_t nlen, vlen;
        if (get_varint(&q, rend, &nlen) < 0 || nlen < 0 || nlen > rend - q) {
            *why = "header name length";
            return -1;
        }
        const unsigned char *name = q;
        q += nlen;
        if (get_varint(&q, rend, &vlen) < 0 || vlen < -1 || vlen > rend - q) {
            *why = "header value length";
            return -1;
        }
        if (nlen == CHAIN_HEADER_LEN && memcmp(name, CHAIN_HEADER, (size_t)nlen) == 0) {
            r->has_link = 1; /* the last one wins, as chain.link_of reads it */
            r->link = q;
            r->link_len = vlen;
        } else {
            r->section_len += 8 + nlen + (vlen > 0 ? vlen : 0);
        }
        q += vlen > 0 ? vlen : 0;
    }
    if (q != rend) {
        *why = "record length (bytes left after the headers)";
        return -1;
    }
    *p = rend;
    return 0;
}

/* The canonical bytes of records[0:n] and the piece tuple around them (a new reference). */
static PyObject *piece(const Rec *recs, Py_ssize_t n) {
    Py_ssize_t keys = 0, values = 0, sections = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        keys += recs[i].key_len > 0 ? recs[i].key_len : 0;
        values += recs[i].value_len > 0 ? recs[i].value_len : 0;
        sections += recs[i].section_len;
    }
    PyObject *canon = PyBytes_FromStringAndSize(NULL, 4 + 20 * n + keys + values + sections);
    if (canon == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(canon);
    o = put_le(o, (uint64_t)n, 4);
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, (uint64_t)recs[i].timestamp, 8);
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, (uint64_t)(int64_t)(recs[i].key_len < 0 ? -1 : recs[i].key_len), 4);
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, (uint64_t)(int64_t)(recs[i].value_len < 0 ? -1 : recs[i].value_len), 4);
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, (uint64_t)recs[i].section_len, 4);
    for (Py_ssize_t i = 0; i < n; i++)
        if (recs[i].key_len > 0) {
            memcpy(o, recs[i].key, (size_t)recs[i].key_len);
            o += recs[i].key_len;
        }
    for (Py_ssize_t i = 0; i < n; i++)
        if (recs[i].value_len > 0) {
            memcpy(o, recs[i].value, (size_t)recs[i].value_len);
            o += recs[i].value_len;
        }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (recs[i].section_len == 0)
            continue;
        const unsigned char *q = recs[i].headers;
        for (int64_t h = 0; h < recs[i].header_count; h++) {
            int64_t nlen = 0, vlen = 0;
            /* validated by parse_record: each varint ends within its 10 bytes */
            get_varint(&q, q + 10, &nlen);
            const unsigned char *name = q;
            q += nlen;
            get_varint(&q, q + 10, &vlen);
            if (!(nlen == CHAIN_HEADER_LEN && memcmp(name, CHAIN_HEADER, (size_t)nlen) == 0)) {
                o = put_le(o, (uint64_t)nlen, 4);
                memcpy(o, name, (size_t)nlen);
                o += nlen;
                o = put_le(o, (uint64_t)(vlen < 0 ? -1 : vlen), 4);
                if (vlen > 0) {
                    memcpy(o, q, (size_t)vlen);
                    o += vlen;
                }
            }
            q += vlen > 0 ? vlen : 0;
        }
    }
    const Rec *last = &recs[n - 1];
    PyObject *link;
    if (!last->has_link) {
        link = Py_None;
        Py_INCREF(link);
    } else {
        /* a null chain header reads as b"", which Link.decode refuses by its size */
        link = PyBytes_FromStringAndSize((const char *)last->link, last->link_len > 0 ? last->link_len : 0);
        if (link == NULL) {
            Py_DECREF(canon);
            return NULL;
        }
    }
    return Py_BuildValue("(NnnnNLL)", canon, n, keys, values, link, (long long)recs[0].offset_delta,
                         (long long)last->offset_delta);
}

/*
 * canonical_from_records(records, count, base_timestamp, append_time) -> list of pieces
 *
 * records: the decompressed records section of a batch (the bytes after its 61-byte header);
 * count: its records_count. A record's timestamp is base_timestamp + its delta, or base_timestamp
 * itself when append_time is true (LOG_APPEND_TIME: the caller passes max_timestamp).
 * Each piece is (canonical, n, keys_size, values_size, link, first_offset_delta, last_offset_delta),
 * cut after every record carrying the chain header (link: that header's value); a last piece of
 * records without it has link None. Malformed records raise ValueError naming the record.
 */
static PyObject *canonical_from_records(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t count;
    long long base_timestamp;
    int append_time;
    if (!PyArg_ParseTuple(args, "y*nLp", &view, &count, &base_timestamp, &append_time))
        return NULL;
    PyObject *out = NULL;
    Rec *recs = NULL;
    if (count < 0 || count > view.len) { /* every record takes a byte at least */
        PyErr_Format(PyExc_ValueError, "malformed record batch: %zd records in %zd bytes", count, view.len);
        goto done;
    }
    recs = PyMem_Malloc(sizeof(Rec) * (size_t)(count > 0 ? count : 1));
    if (recs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const unsigned char *p = view.buf, *end = p + view.len;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *why = "";
        if (parse_record(&p, end, &recs[i], &why) < 0) {
            PyErr_Format(PyExc_ValueError, "malformed record batch: record %zd of %zd: bad %s", i, count, why);
            goto done;
        }
        recs[i].timestamp = append_time ? base_timestamp : base_timestamp + recs[i].timestamp;
    }
    if (p != end) {
        PyErr_Format(PyExc_ValueError, "malformed record batch: %zd bytes after its %zd records", (Py_ssize_t)(end - p),
                     count);
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!recs[i].has_link && i != count - 1)
            continue;
        PyObject *one = piece(recs + start, i + 1 - start);
        if (one == NULL || PyList_Append(out, one) < 0) {
            Py_XDECREF(one);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(one);
        start = i + 1;
    }
done:
    PyMem_Free(recs);
    PyBuffer_Release(&view);
    return out;
}

/* The length of a key or value column item: bytes (its size) or None (-1); -2 with TypeError else. */
static Py_ssize_t item_length(PyObject *item, const char *column, Py_ssize_t index) {
    if (item == Py_None)
        return -1;
    if (PyBytes_Check(item))
        return PyBytes_GET_SIZE(item);
    PyErr_Format(PyExc_TypeError, "%s[%zd] must be bytes or None, not %.100s", column, index, Py_TYPE(item)->tp_name);
    return -2;
}

/* One record's headers: a sequence of (str, bytes | None). Adds its section's length to *section
 * (the chain header left out); -1 with an exception when an item is not of those types. */
static int section_length(PyObject *record_headers, Py_ssize_t index, int64_t *section) {
    PyObject *fast = PySequence_Fast(record_headers, "headers[i] must be a sequence of (name, value)");
    if (fast == NULL)
        return -1;
    int64_t total = 0;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t h = 0; h < count; h++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(fast, h);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_Format(PyExc_TypeError, "headers[%zd][%zd] must be a (str, bytes | None) tuple", index, h);
            Py_DECREF(fast);
            return -1;
        }
        Py_ssize_t nlen;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &nlen);
        if (name == NULL) {
            Py_DECREF(fast);
            return -1;
        }
        if (nlen == CHAIN_HEADER_LEN && memcmp(name, CHAIN_HEADER, (size_t)nlen) == 0)
            continue;
        Py_ssize_t vlen = item_length(PyTuple_GET_ITEM(pair, 1), "header value", index);
        if (vlen == -2) {
            Py_DECREF(fast);
            return -1;
        }
        total += 8 + nlen + (vlen > 0 ? vlen : 0);
    }
    Py_DECREF(fast);
    *section = total;
    return 0;
}

static char *put_section(char *o, PyObject *record_headers) {
    PyObject *fast = PySequence_Fast(record_headers, ""); /* checked by section_length */
    if (fast == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t h = 0; h < count; h++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(fast, h);
        Py_ssize_t nlen;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &nlen);
        if (nlen == CHAIN_HEADER_LEN && memcmp(name, CHAIN_HEADER, (size_t)nlen) == 0)
            continue;
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        o = put_le(o, (uint64_t)nlen, 4);
        memcpy(o, name, (size_t)nlen);
        o += nlen;
        if (value == Py_None) {
            o = put_le(o, (uint64_t)(int64_t)-1, 4);
        } else {
            Py_ssize_t vlen = PyBytes_GET_SIZE(value);
            o = put_le(o, (uint64_t)vlen, 4);
            memcpy(o, PyBytes_AS_STRING(value), (size_t)vlen);
            o += vlen;
        }
    }
    Py_DECREF(fast);
    return o;
}

/*
 * canonical_from_columns(timestamps, keys, values, headers) -> bytes
 *
 * The canonical form of a block held as columns (chain.Columns: what an append hashes): lists of
 * ints, bytes | None, bytes | None, and per record a sequence of (str, bytes | None) headers or
 * None for no headers at all. TypeError for anything else (the caller falls back to Python).
 */
static PyObject *canonical_from_columns(PyObject *self, PyObject *args) {
    PyObject *ts_in, *keys_in, *values_in, *headers_in;
    if (!PyArg_ParseTuple(args, "OOOO", &ts_in, &keys_in, &values_in, &headers_in))
        return NULL;
    PyObject *ts = NULL, *keys = NULL, *values = NULL, *headers = NULL, *out = NULL;
    int64_t *sections = NULL;
    if ((ts = PySequence_Fast(ts_in, "timestamps must be a sequence")) == NULL ||
        (keys = PySequence_Fast(keys_in, "keys must be a sequence")) == NULL ||
        (values = PySequence_Fast(values_in, "values must be a sequence")) == NULL)
        goto done;
    if (headers_in != Py_None && (headers = PySequence_Fast(headers_in, "headers must be a sequence")) == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ts);
    if (PySequence_Fast_GET_SIZE(keys) != n || PySequence_Fast_GET_SIZE(values) != n ||
        (headers != NULL && PySequence_Fast_GET_SIZE(headers) != n)) {
        PyErr_SetString(PyExc_ValueError, "timestamps, keys, values and headers differ in length");
        goto done;
    }
    PyObject **t = PySequence_Fast_ITEMS(ts), **k = PySequence_Fast_ITEMS(keys), **v = PySequence_Fast_ITEMS(values);
    Py_ssize_t key_bytes = 0, value_bytes = 0;
    int64_t section_bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t kl = item_length(k[i], "keys", i), vl = item_length(v[i], "values", i);
        if (kl == -2 || vl == -2)
            goto done;
        key_bytes += kl > 0 ? kl : 0;
        value_bytes += vl > 0 ? vl : 0;
    }
    if (headers != NULL) {
        sections = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
        if (sections == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        PyObject **h = PySequence_Fast_ITEMS(headers);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (h[i] != Py_None && section_length(h[i], i, &sections[i]) < 0)
                goto done;
            section_bytes += sections[i];
        }
    }
    out = PyBytes_FromStringAndSize(NULL, 4 + 20 * n + key_bytes + value_bytes + section_bytes);
    if (out == NULL)
        goto done;
    char *o = PyBytes_AS_STRING(out);
    o = put_le(o, (uint64_t)n, 4);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((o = put_stamp(o, t[i], i)) == NULL) {
            Py_CLEAR(out);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, (uint64_t)(int64_t)(k[i] == Py_None ? -1 : PyBytes_GET_SIZE(k[i])), 4);
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, (uint64_t)(int64_t)(v[i] == Py_None ? -1 : PyBytes_GET_SIZE(v[i])), 4);
    for (Py_ssize_t i = 0; i < n; i++)
        o = put_le(o, sections == NULL ? 0 : (uint64_t)sections[i], 4);
    for (Py_ssize_t i = 0; i < n; i++)
        if (k[i] != Py_None) {
            memcpy(o, PyBytes_AS_STRING(k[i]), (size_t)PyBytes_GET_SIZE(k[i]));
            o += PyBytes_GET_SIZE(k[i]);
        }
    for (Py_ssize_t i = 0; i < n; i++)
        if (v[i] != Py_None) {
            memcpy(o, PyBytes_AS_STRING(v[i]), (size_t)PyBytes_GET_SIZE(v[i]));
            o += PyBytes_GET_SIZE(v[i]);
        }
    if (headers != NULL) {
        PyObject **h = PySequence_Fast_ITEMS(headers);
        for (Py_ssize_t i = 0; i < n; i++)
            if (sections[i] && (o = put_section(o, h[i])) == NULL) {
                Py_CLEAR(out);
                goto done;
            }
    }
done:
    PyMem_Free(sections);
    Py_XDECREF(ts);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(headers);
    return out;
}


/* sha256(prefix || data[0:len]); callable without the GIL. 0 when out of memory. */
static int hash_parts(unsigned char out[32], const Py_buffer *prefix, const char *data, Py_ssize_t len) {
    Sha256 *ctx = PyMem_RawMalloc(sizeof(Sha256));
    if (ctx == NULL)
        return 0;
    sha256_init(ctx);
    sha256_update(ctx, prefix->buf, (size_t)prefix->len);
    sha256_update(ctx, data, (size_t)len);
    sha256_final(ctx, out);
    PyMem_RawFree(ctx);
    return 1;
}

/*
 * digest_columns(prev, timestamps, keys, values, headers, last=None) -> bytes
 *
 * sha256(prev || canonical_from_columns(timestamps, keys, values, headers)): what an append to a
 * chained topic computes per block, without the canonical form as one object. `last`, a
 * (timestamp, key, value) tuple, is one more record after the columns (headers must be None):
 * the appender takes its block's last record off its lists for the while it builds the batch of
 * the others from them, which copying the lists would cost a cache miss per record. The columns are
 * checked and their lengths taken with the GIL; then, with it released, the canonical form is
 * fed to the hash as it is cut (the keys and values straight from their bytes objects, which are
 * held for the while). So it runs in a thread beside the batch's compression, sharing no lock.
 * Records with headers (rare in audit events) take the canonical form whole, then the same hash.
 * RuntimeError where the CPU lacks the SHA instructions (see sha256_in_c()): use hashlib there.
 */
static PyObject *digest_columns(PyObject *self, PyObject *args) {
    Py_buffer prev;
    PyObject *ts_in, *keys_in, *values_in, *headers_in, *last = Py_None;
    if (!PyArg_ParseTuple(args, "y*OOOO|O", &prev, &ts_in, &keys_in, &values_in, &headers_in, &last))
        return NULL;
    PyObject *ts = NULL, *keys = NULL, *values = NULL, *out = NULL, **held = NULL, **columns = NULL;
    char *head = NULL;
    Py_ssize_t n = 0, nheld = 0;
    unsigned char digest[32];
    int ok = 0;
    if (!sha256_available()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no SHA instructions: hash with hashlib");
        goto done;
    }
    if (last != Py_None && (headers_in != Py_None || !PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 3)) {
        PyErr_SetString(PyExc_TypeError, "last must be a (timestamp, key, value) tuple, and headers None");
        goto done;
    }
    if (headers_in != Py_None) {
        PyObject *four = PyTuple_Pack(4, ts_in, keys_in, values_in, headers_in);
        PyObject *canon = four == NULL ? NULL : canonical_from_columns(self, four);
        Py_XDECREF(four);
        if (canon == NULL)
            goto done;
        Py_BEGIN_ALLOW_THREADS
        ok = hash_parts(digest, &prev, PyBytes_AS_STRING(canon), PyBytes_GET_SIZE(canon));
        Py_END_ALLOW_THREADS
        Py_DECREF(canon);
        goto hashed;
    }
    if ((ts = PySequence_Fast(ts_in, "timestamps must be a sequence")) == NULL ||
        (keys = PySequence_Fast(keys_in, "keys must be a sequence")) == NULL ||
        (values = PySequence_Fast(values_in, "values must be a sequence")) == NULL)
        goto done;
    Py_ssize_t listed = PySequence_Fast_GET_SIZE(ts);
    if (PySequence_Fast_GET_SIZE(keys) != listed || PySequence_Fast_GET_SIZE(values) != listed) {
        PyErr_SetString(PyExc_ValueError, "timestamps, keys, values and headers differ in length");
        goto done;
    }
    /* the columns as arrays of the items (pointers copied: no item is touched), `last` after them */
    n = listed + (last != Py_None);
    columns = PyMem_Malloc(sizeof(PyObject *) * (size_t)(3 * n + 1));
    if (columns == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject **t = columns, **k = columns + n, **v = columns + 2 * n;
    memcpy(t, PySequence_Fast_ITEMS(ts), sizeof(PyObject *) * (size_t)listed);
    memcpy(k, PySequence_Fast_ITEMS(keys), sizeof(PyObject *) * (size_t)listed);
    memcpy(v, PySequence_Fast_ITEMS(values), sizeof(PyObject *) * (size_t)listed);
    if (last != Py_None) {
        t[listed] = PyTuple_GET_ITEM(last, 0);
        k[listed] = PyTuple_GET_ITEM(last, 1);
        v[listed] = PyTuple_GET_ITEM(last, 2);
    }
    /* u32 n, i64[n] timestamps, i32[n] key, value and (no headers: 0) section lengths */
    Py_ssize_t head_size = 4 + 20 * n;
    head = PyMem_Malloc((size_t)head_size);
    held = PyMem_Malloc(sizeof(PyObject *) * (size_t)(2 * n + 1));
    if (head == NULL || held == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    char *o = put_le(head, (uint64_t)n, 4);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((o = put_stamp(o, t[i], i)) == NULL)
            goto done;
    }
    for (int column = 0; column < 2; column++) {
        PyObject **items = column ? v : k;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t length = item_length(items[i], column ? "values" : "keys", i);
            if (length == -2)
                goto done;
            o = put_le(o, (uint64_t)(int64_t)length, 4);
            if (length >= 0) { /* held until the hash is done: the lists may change meanwhile */
                Py_INCREF(items[i]);
                held[nheld++] = items[i];
            }
        }
    }
    memset(o, 0, (size_t)(4 * n));
    Py_BEGIN_ALLOW_THREADS
    Sha256 *ctx = PyMem_RawMalloc(sizeof(Sha256));
    if (ctx != NULL) {
        sha256_init(ctx);
        sha256_update(ctx, prev.buf, (size_t)prev.len);
        sha256_update(ctx, head, (size_t)head_size);
        for (Py_ssize_t i = 0; i < nheld; i++) /* the keys, then the values, in record order */
            sha256_feed(ctx, PyBytes_AS_STRING(held[i]), (size_t)PyBytes_GET_SIZE(held[i]));
        sha256_final(ctx, digest);
        PyMem_RawFree(ctx);
        ok = 1;
    }
    Py_END_ALLOW_THREADS
hashed:
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    out = PyBytes_FromStringAndSize((const char *)digest, 32);
done:
    for (Py_ssize_t i = 0; i < nheld; i++)
        Py_DECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(columns);
    PyMem_Free(head);
    Py_XDECREF(ts);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    PyBuffer_Release(&prev);
    return out;
}

static PyObject *sha256_in_c(PyObject *self, PyObject *unused) { return PyBool_FromLong(sha256_available()); }

static PyMethodDef methods[] = {
    {"digest_columns", digest_columns, METH_VARARGS,
     "digest_columns(prev, timestamps, keys, values, headers, last=None) -> bytes\n\n"
     "sha256(prev || the canonical form of the columns, then of the record last = (timestamp, key,\n"
     "value) if given), hashed without the GIL; RuntimeError where sha256_in_c() is false."},
    {"sha256_in_c", sha256_in_c, METH_NOARGS,
     "sha256_in_c() -> bool\n\nDoes this CPU have the SHA instructions digest_columns needs?"},
    {"canonical_from_records", canonical_from_records, METH_VARARGS,
     "canonical_from_records(records, count, base_timestamp, append_time) -> list[piece]\n\n"
     "The chain's canonical form of a batch's records section, cut after each record carrying the chain\n"
     "header; piece = (canonical, n, keys_size, values_size, link | None, first_offset_delta,\n"
     "last_offset_delta)."},
    {"canonical_from_columns", canonical_from_columns, METH_VARARGS,
     "canonical_from_columns(timestamps, keys, values, headers) -> bytes\n\n"
     "The chain's canonical form of a block held as columns (headers: per record (name, value) pairs, or\n"
     "None for none at all)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_canon", NULL, -1, methods};

PyMODINIT_FUNC PyInit__canon(void) { return PyModule_Create(&module); }
