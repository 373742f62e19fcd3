/*
 * Encode a whole Kafka RecordBatch v2 from columns in one call.
 *
 * build_batch() in batch.py hands aiokafka's C builder one record per Python
 * call (about 0.35 us each). A source that already holds its records as
 * three lists (keys, values and timestamps: JsonRecords) skips that loop:
 * this module walks the lists in C and writes the same bytes the builder
 * writes for a batch without headers (batch.py compresses the records after,
 * as the builder does). The CRC is left zero for
 * the caller (batch.py computes it with the crc32c package, as for every
 * other batch), and so is the base offset (the log assigns it).
 *
 * Layout (big-endian header, then records with zigzag varints):
 *
 *   0  base_offset int64          37 max_timestamp int64
 *   8  batch_length int32         45 producer_id int64
 *  12  partition_leader_epoch -1  53 producer_epoch int16
 *  16  magic int8 = 2             55 base_sequence int32 = -1
 *  17  crc uint32                 57 record count int32
 *  21  attributes int16           61 records...
 *  23  last_offset_delta int32
 *  27  first_timestamp int64
 *
 *  record: length varint, attributes int8 (0), timestamp_delta varlong,
 *          offset_delta varint, key_length varint (-1 = null), key,
 *          value_length varint (-1 = null), value, header count varint (0)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 61

static int varint_size(int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static char *put_varint(char *p, int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (v >= 0x80) {
        *p++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *p++ = (char)v;
    return p;
}

static char *put_be(char *p, uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (char)(value & 0xFF);
        value >>= 8;
    }
    return p + bytes;
}

/* The size of a record after its length varint. */
static int64_t record_body(int64_t timestamp_delta, Py_ssize_t offset_delta, Py_ssize_t klen, Py_ssize_t vlen) {
    return 1 + varint_size(timestamp_delta) + varint_size(offset_delta) + varint_size(klen) + (klen > 0 ? klen : 0) +
           varint_size(vlen) + (vlen > 0 ? vlen : 0) + 1;
}

/* The length of a key or value column entry: -1 for None, else its size. */
static int field_length(PyObject *obj, Py_ssize_t *length, const char *what, Py_ssize_t index) {
    if (obj == Py_None) {
        *length = -1;
        return 0;
    }
    if (!PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s[%zd] must be bytes or None, not %.100s", what, index,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *length = PyBytes_GET_SIZE(obj);
    return 0;
}

static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *keys, *values, *timestamps;
    long long producer_id;
    int producer_epoch, attributes;
    if (!PyArg_ParseTuple(args, "O!O!O!Lii", &PyList_Type, &keys, &PyList_Type, &values, &PyList_Type,
                          &timestamps, &producer_id, &producer_epoch, &attributes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(values) != n || PyList_GET_SIZE(timestamps) != n) {
        PyErr_SetString(PyExc_ValueError, "keys, values and timestamps differ in length");
        return NULL;
    }
    if (n == 0 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a batch holds 1 to 2^31-1 records");
        return NULL;
    }
    /* first pass: sizes and timestamps */
    int64_t *ts = PyMem_Malloc(sizeof(int64_t) * (size_t)n);
    if (ts == NULL)
        return PyErr_NoMemory();
    int64_t first = 0, max_ts = INT64_MIN;
    Py_ssize_t total = HEADER_SIZE;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *stamp = PyList_GET_ITEM(timestamps, i);
        if (!PyLong_Check(stamp)) { /* no Python code may run between the passes */
            PyErr_Format(PyExc_TypeError, "timestamps[%zd] must be an int", i);
            goto fail;
        }
        long long t = PyLong_AsLongLong(stamp);
        if (t == -1 && PyErr_Occurred())
            goto fail;
        ts[i] = t;
        if (i == 0)
            first = t;
        if (t > max_ts)
            max_ts = t;
        Py_ssize_t klen, vlen;
        if (field_length(PyList_GET_ITEM(keys, i), &klen, "keys", i) < 0 ||
            field_length(PyList_GET_ITEM(values, i), &vlen, "values", i) < 0)
            goto fail;
        int64_t body = record_body(t - first, i, klen, vlen);
        total += varint_size(body) + body;
    }
    if (total - 12 > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch larger than 2 GiB");
        goto fail;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto fail;
    char *base = PyByteArray_AS_STRING(out);
    char *p = base;
    p = put_be(p, 0, 8);                               /* base offset: the log's */
    p = put_be(p, (uint64_t)(total - 12), 4);          /* batch length */
    p = put_be(p, (uint32_t)-1, 4);                    /* partition leader epoch */
    *p++ = 2;                                          /* magic */
    p = put_be(p, 0, 4);                               /* CRC: the caller's */
    p = put_be(p, (uint16_t)attributes, 2);
    p = put_be(p, (uint32_t)(n - 1), 4);               /* last offset delta */
    p = put_be(p, (uint64_t)first, 8);
    p = put_be(p, (uint64_t)max_ts, 8);
    p = put_be(p, (uint64_t)producer_id, 8);
    p = put_be(p, (uint16_t)producer_epoch, 2);
    p = put_be(p, (uint32_t)-1, 4);                    /* base sequence */
    p = put_be(p, (uint32_t)n, 4);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i), *value = PyList_GET_ITEM(values, i);
        Py_ssize_t klen = key == Py_None ? -1 : PyBytes_GET_SIZE(key);
        Py_ssize_t vlen = value == Py_None ? -1 : PyBytes_GET_SIZE(value);
        p = put_varint(p, record_body(ts[i] - first, i, klen, vlen));
        *p++ = 0; /* record attributes */
        p = put_varint(p, ts[i] - first);
        p = put_varint(p, i);
        p = put_varint(p, klen);
        if (klen > 0) {
            memcpy(p, PyBytes_AS_STRING(key), (size_t)klen);
            p += klen;
        }
        p = put_varint(p, vlen);
        if (vlen > 0) {
            memcpy(p, PyBytes_AS_STRING(value), (size_t)vlen);
            p += vlen;
        }
        *p++ = 0; /* no headers */
    }
    PyMem_Free(ts);
    if (p - base != total) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "record batch size miscounted");
        return NULL;
    }
    return out;
fail:
    PyMem_Free(ts);
    return NULL;
}

/*
 * build_lines(blocks, counts, keys, timestamps, producer_id, producer_epoch, attributes): the batch
 * build() would write for the lines of the blocks. Block i holds counts[i] lines, each ended by
 * "\n" (the newline is not part of the value), all with keys[i] and timestamps[i]. No Python
 * object per line: the values are found with memchr and copied once.
 */
static PyObject *build_lines(PyObject *self, PyObject *args) {
    PyObject *blocks, *counts, *keys, *timestamps;
    long long producer_id;
    int producer_epoch, attributes;
    if (!PyArg_ParseTuple(args, "O!O!O!O!Lii", &PyList_Type, &blocks, &PyList_Type, &counts, &PyList_Type, &keys,
                          &PyList_Type, &timestamps, &producer_id, &producer_epoch, &attributes))
        return NULL;
    Py_ssize_t nb = PyList_GET_SIZE(blocks);
    if (PyList_GET_SIZE(counts) != nb || PyList_GET_SIZE(keys) != nb || PyList_GET_SIZE(timestamps) != nb) {
        PyErr_SetString(PyExc_ValueError, "blocks, counts, keys and timestamps differ in length");
        return NULL;
    }
    /* first pass: check the columns, count the lines, size the batch */
    int64_t n = 0, first = 0, max_ts = INT64_MIN;
    Py_ssize_t total = HEADER_SIZE;
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *block = PyList_GET_ITEM(blocks, b), *key = PyList_GET_ITEM(keys, b);
        PyObject *count = PyList_GET_ITEM(counts, b), *stamp = PyList_GET_ITEM(timestamps, b);
        Py_ssize_t klen;
        if (!PyBytes_Check(block) || !PyLong_Check(count) || !PyLong_Check(stamp)) {
            PyErr_Format(PyExc_TypeError, "block %zd: blocks are bytes, counts and timestamps ints", b);
            return NULL;
        }
        if (field_length(key, &klen, "keys", b) < 0)
            return NULL;
        long long t = PyLong_AsLongLong(stamp), c = PyLong_AsLongLong(count);
        if ((t == -1 || c == -1) && PyErr_Occurred())
            return NULL;
        if (b == 0)
            first = t;
        if (t > max_ts)
            max_ts = t;
        const char *p = PyBytes_AS_STRING(block), *end = p + PyBytes_GET_SIZE(block);
        for (long long i = 0; i < c; i++) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (nl == NULL) {
                PyErr_Format(PyExc_ValueError, "block %zd holds fewer than %lld lines", b, c);
                return NULL;
            }
            int64_t body = record_body(t - first, (Py_ssize_t)n, klen, nl - p);
            total += varint_size(body) + body;
            p = nl + 1;
            n++;
        }
        if (p != end) {
            PyErr_Format(PyExc_ValueError, "block %zd holds more than %lld lines", b, c);
            return NULL;
        }
    }
    if (n == 0 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a batch holds 1 to 2^31-1 records");
        return NULL;
    }
    if (total - 12 > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch larger than 2 GiB");
        return NULL;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *base = PyByteArray_AS_STRING(out);
    char *o = base;
    o = put_be(o, 0, 8);
    o = put_be(o, (uint64_t)(total - 12), 4);
    o = put_be(o, (uint32_t)-1, 4);
    *o++ = 2;
    o = put_be(o, 0, 4);
    o = put_be(o, (uint16_t)attributes, 2);
    o = put_be(o, (uint32_t)(n - 1), 4);
    o = put_be(o, (uint64_t)first, 8);
    o = put_be(o, (uint64_t)max_ts, 8);
    o = put_be(o, (uint64_t)producer_id, 8);
    o = put_be(o, (uint16_t)producer_epoch, 2);
    o = put_be(o, (uint32_t)-1, 4);
    o = put_be(o, (uint32_t)n, 4);
    int64_t offset = 0;
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *block = PyList_GET_ITEM(blocks, b), *key = PyList_GET_ITEM(keys, b);
        Py_ssize_t klen = key == Py_None ? -1 : PyBytes_GET_SIZE(key);
        int64_t delta = PyLong_AsLongLong(PyList_GET_ITEM(timestamps, b)) - first;
        const char *p = PyBytes_AS_STRING(block), *end = p + PyBytes_GET_SIZE(block);
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            Py_ssize_t vlen = nl - p;
            o = put_varint(o, record_body(delta, (Py_ssize_t)offset, klen, vlen));
            *o++ = 0;
            o = put_varint(o, delta);
            o = put_varint(o, offset);
            o = put_varint(o, klen);
            if (klen > 0) {
                memcpy(o, PyBytes_AS_STRING(key), (size_t)klen);
                o += klen;
            }
            o = put_varint(o, vlen);
            memcpy(o, p, (size_t)vlen);
            o += vlen;
            *o++ = 0;
            p = nl + 1;
            offset++;
        }
    }
    if (o - base != total) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "record batch size miscounted");
        return NULL;
    }
    return out;
}

/* line_end(block, n): the position just after the n-th newline of block (len(block) + 1 if fewer). */
static PyObject *line_end(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*n", &view, &n))
        return NULL;
    const char *start = view.buf, *p = start, *end = start + view.len;
    Py_ssize_t position = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
        if (nl == NULL) {
            position = view.len + 1;
            break;
        }
        p = nl + 1;
        position = p - start;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(position);
}

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

static uint64_t get_be(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

/*
 * lines(batches, from_offset): the values of uncompressed batches, each followed by "\n", in one
 * bytes object, skipping records before from_offset. Returns (data, count, first_offset,
 * last_offset, ascii), or None when a batch is compressed or a value is null or holds a newline
 * (such records are not lines; the caller decodes them instead). Malformed bytes raise ValueError.
 */
static PyObject *lines(PyObject *self, PyObject *args) {
    PyObject *batches;
    long long from_offset;
    if (!PyArg_ParseTuple(args, "O!L", &PyList_Type, &batches, &from_offset))
        return NULL;
    Py_ssize_t nb = PyList_GET_SIZE(batches);
    Py_ssize_t bound = 0;
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *item = PyList_GET_ITEM(batches, b);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "batches[%zd] must be bytes", b);
            return NULL;
        }
        bound += PyBytes_GET_SIZE(item); /* a value and its newline never outgrow their record */
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, bound);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    unsigned char high = 0;
    long long count = 0, first = -1, last = -1;
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *item = PyList_GET_ITEM(batches, b);
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(item);
        Py_ssize_t size = PyBytes_GET_SIZE(item);
        if (size < HEADER_SIZE)
            goto malformed;
        if (get_be(data + 21, 2) & 0x07)
            goto not_lines; /* compressed */
        int64_t base = (int64_t)get_be(data, 8);
        int64_t n = (int32_t)get_be(data + 57, 4);
        const unsigned char *p = data + HEADER_SIZE, *end = data + size;
        for (int64_t i = 0; i < n; i++) {
            int64_t length, skip, delta, klen, vlen, nh;
            if (get_varint(&p, end, &length) < 0 || length < 0 || length > end - p)
                goto malformed;
            const unsigned char *rend = p + length;
            p++; /* record attributes */
            if (get_varint(&p, rend, &skip) < 0 || get_varint(&p, rend, &delta) < 0 ||
                get_varint(&p, rend, &klen) < 0 || klen > rend - p)
                goto malformed;
            if (klen > 0)
                p += klen;
            if (get_varint(&p, rend, &vlen) < 0 || vlen > rend - p)
                goto malformed;
            int64_t offset = base + delta;
            if (offset >= from_offset) {
                if (vlen < 0 || memchr(p, '\n', (size_t)vlen) != NULL)
                    goto not_lines;
                for (int64_t j = 0; j < vlen; j++)
                    high |= p[j];
                memcpy(o, p, (size_t)vlen);
                o += vlen;
                *o++ = '\n';
                if (first < 0)
                    first = offset;
                last = offset;
                count++;
            }
            p += vlen > 0 ? vlen : 0;
            if (get_varint(&p, rend, &nh) < 0 || nh < 0)
                goto malformed;
            p = rend; /* headers: not part of a line */
        }
    }
    if (_PyBytes_Resize(&out, o - PyBytes_AS_STRING(out)) < 0)
        return NULL;
    return Py_BuildValue("(NLLLO)", out, count, first, last, (high & 0x80) ? Py_False : Py_True);
not_lines:
    Py_DECREF(out);
    Py_RETURN_NONE;
malformed:
    Py_DECREF(out);
    PyErr_SetString(PyExc_ValueError, "malformed record batch");
    return NULL;
}

static PyMethodDef methods[] = {
    {"line_end", line_end, METH_VARARGS,
     "line_end(block, n) -> int\n\nThe position just after the n-th newline (len(block) + 1 if there are fewer)."},
    {"build_lines", build_lines, METH_VARARGS,
     "build_lines(blocks, counts, keys, timestamps, producer_id, producer_epoch, attributes) -> bytearray\n\n"
     "build() for blocks of newline-ended lines, one key and timestamp per block."},
    {"lines", lines, METH_VARARGS,
     "lines(batches, from_offset) -> (data, count, first_offset, last_offset, ascii) | None\n\n"
     "The values of uncompressed batches as newline-ended lines; None if one is null or holds a newline."},
    {"build", build, METH_VARARGS,
     "build(keys, values, timestamps, producer_id, producer_epoch, attributes) -> bytearray\n\n"
     "An uncompressed RecordBatch v2 without headers; base offset and CRC are zero."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_columns", NULL, -1, methods};

PyMODINIT_FUNC PyInit__columns(void) { return PyModule_Create(&module); }
