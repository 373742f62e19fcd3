/*
 * The Postgres sink's fast way through a poll of CDC values, in C: which values
 * are plain upserts in the postgres-cdc envelope, and their rows' JSON.
 *
 * sink.py's _plain_row does the same for one value in Python, with about a
 * dozen bytes calls (3 us a value on a small machine); this walks a whole
 * poll in one call. What it accepts is what _plain_row accepts or narrower, so
 * the exactness argument there holds here: a value is
 *
 *   {"before":null,"after":ROW,"op":"c|u|r","source":{FIELDS,"column_types":TYPES},"ts_ms":N}
 *
 * where ROW ends at the first ',"op":"' after it (the caller parses it; a
 * slice that is no whole JSON object does not parse), and FIELDS + the rest
 * match a template taken from a value whose fields the caller found valid:
 * literal pieces, and between them either a JSON integer (0 or [1-9][0-9]*;
 * the template had a maximal run of digits there, outside the LSN) or the
 * LSN's text ([0-9A-F/]*, inside a string). Either keeps valid fields valid,
 * with the same names, and TYPES is literal. ROW must hold no run of 19
 * digits (orjson reads an integer beyond 64 bits as a float).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char HEAD[] = "{\"before\":null,\"after\":{";
#define HEAD_LEN 24
static const char OP[] = ",\"op\":\"";
#define OP_LEN 7
static const char SOURCE[] = "\",\"source\":{";
#define SOURCE_LEN 12

#define KIND_INT 1
#define KIND_LSN 2

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int is_lsn(char c) { return is_digit(c) || (c >= 'A' && c <= 'F') || c == '/'; }

/* the position of the first ',"op":"' in data[from:n], or -1 */
static Py_ssize_t find_op(const char *data, Py_ssize_t from, Py_ssize_t n) {
    const char *p = data + from;
    const char *end = data + n;
    while (p + OP_LEN <= end) {
        const char *q = memchr(p, ',', (size_t)(end - p));
        if (q == NULL || q + OP_LEN > end) return -1;
        if (memcmp(q, OP, OP_LEN) == 0) return q - data;
        p = q + 1;
    }
    return -1;
}

/* whether data[from:to] holds a run of 19 digits */
static int long_digits(const char *data, Py_ssize_t from, Py_ssize_t to) {
    int run = 0;
    for (Py_ssize_t i = from; i < to; i++) {
        if (is_digit(data[i])) {
            if (++run >= 19) return 1;
        } else {
            run = 0;
        }
    }
    return 0;
}

/* the row's end (the position of ',"op":"') if data matches, else -1 */
static Py_ssize_t match(const char *data, Py_ssize_t n, PyObject *pieces, Py_ssize_t npieces) {
    if (n < HEAD_LEN || memcmp(data, HEAD, HEAD_LEN) != 0) return -1;
    Py_ssize_t i = find_op(data, HEAD_LEN - 1, n);
    if (i < 0 || i + OP_LEN + 1 + SOURCE_LEN > n) return -1;
    char op = data[i + OP_LEN];
    if (op != 'c' && op != 'u' && op != 'r') return -1;
    if (memcmp(data + i + OP_LEN + 1, SOURCE, SOURCE_LEN) != 0) return -1;
    Py_ssize_t pos = i + OP_LEN + 1 + SOURCE_LEN;
    for (Py_ssize_t k = 0; k < npieces; k++) {
        PyObject *piece = PyTuple_GET_ITEM(pieces, k);
        if (PyLong_CheckExact(piece)) {
            long kind = PyLong_AsLong(piece);
            if (kind == KIND_INT) {
                if (pos >= n || !is_digit(data[pos])) return -1;
                if (data[pos] == '0') {
                    pos++;
                } else {
                    while (pos < n && is_digit(data[pos])) pos++;
                }
            } else {
                while (pos < n && is_lsn(data[pos])) pos++;
            }
        } else {
            Py_ssize_t len = PyBytes_GET_SIZE(piece);
            if (pos + len > n || memcmp(data + pos, PyBytes_AS_STRING(piece), (size_t)len) != 0) return -1;
            pos += len;
        }
    }
    if (pos != n) return -1;
    if (long_digits(data, HEAD_LEN - 1, i)) return -1;
    return i;
}

/*
 * rows(values, pieces) -> list[bytes | None]
 *
 * For each value, the row's JSON text (data[23:end]) when the value matches
 * (see above), else None (not bytes, a tombstone, anything else).
 */
static PyObject *rows(PyObject *self, PyObject *args) {
    PyObject *values, *pieces;
    if (!PyArg_ParseTuple(args, "O!O!:rows", &PyList_Type, &values, &PyTuple_Type, &pieces)) return NULL;
    Py_ssize_t npieces = PyTuple_GET_SIZE(pieces);
    for (Py_ssize_t k = 0; k < npieces; k++) {
        PyObject *piece = PyTuple_GET_ITEM(pieces, k);
        if (PyLong_CheckExact(piece)) {
            long kind = PyLong_AsLong(piece);
            if (kind != KIND_INT && kind != KIND_LSN) {
                PyErr_SetString(PyExc_ValueError, "a template's wildcard is 1 (an integer) or 2 (the LSN's text)");
                return NULL;
            }
        } else if (!PyBytes_CheckExact(piece)) {
            PyErr_SetString(PyExc_TypeError, "a template holds bytes and wildcards (1, 2)");
            return NULL;
        }
    }
    Py_ssize_t count = PyList_GET_SIZE(values);
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *value = PyList_GET_ITEM(values, j);
        PyObject *row = NULL;
        if (PyBytes_CheckExact(value)) {
            const char *data = PyBytes_AS_STRING(value);
            Py_ssize_t end = match(data, PyBytes_GET_SIZE(value), pieces, npieces);
            if (end >= 0) {
                row = PyBytes_FromStringAndSize(data + HEAD_LEN - 1, end - (HEAD_LEN - 1));
                if (row == NULL) {
                    Py_DECREF(out);
                    return NULL;
                }
            }
        }
        if (row == NULL) {
            row = Py_None;
            Py_INCREF(row);
        }
        PyList_SET_ITEM(out, j, row);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS,
     "rows(values, pieces) -> list[bytes | None]\n\n"
     "Each value's row JSON when it is a plain upsert whose source block matches the template ``pieces``."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sink_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sink_scan(void) { return PyModule_Create(&module); }
