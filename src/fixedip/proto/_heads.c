/* The one-pass head parser and the head serialiser, hand-written in C.
 *
 * The same functions exist in Python in fixedip/proto/http1.py (`_parse_request_py`,
 * `_parse_response_py`, `_forward_head_py`), which run when this module was not built;
 * tests/proto/test_heads_c.py checks that both give the same answer for any input, and
 * tests/proto/test_http1_fast.py that either gives what llhttp gives.
 *
 * Why C: a keep-alive request costs the gateway two heads parsed and two serialised.
 * Compiled Python spends about 7 us a request on that (regular expressions, a bytes
 * object per line to look up, lists and tuples between the steps); here it is one pass
 * over the bytes, lines seen before are found without building an object, and a head
 * goes out as one bytes object written in place.
 *
 * What a parse accepts is exactly what http1.py's regular expressions accept, a subset
 * of what llhttp accepts at each place: a head it declines (None) goes to llhttp.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_HEADERS 100      /* http1.MAX_HEADERS */
#define LINE_MAX_BYTES 256   /* http1._LINE_MAX_BYTES: longer lines are never kept */
#define LINES_MAX 2048       /* http1._LINES_MAX */
#define STATUS_LINES_MAX 256 /* http1._STATUS_LINES_MAX */
#define CONTENT_LENGTH_DIGITS 18

/* character classes --------------------------------------------------------------- */
enum {
    C_TOKEN = 1,   /* tchar (RFC 9110 section 5.6.2) */
    C_VFIRST = 2,  /* the first byte of a field value: visible or obs-text */
    C_VREST = 4,   /* the rest: also space and tab */
    C_AUTH = 8,    /* an authority in an absolute-form target */
    C_TARGET = 16, /* a request target: visible ASCII */
    C_CONN = 32,   /* a Connection token, lowered */
};
static unsigned char cls[256];

static void
init_classes(void)
{
    for (int c = 1; c < 256; c++) {
        unsigned char f = 0;
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (alnum || strchr("!#$%&'*+.^_`|~-", c))
            f |= C_TOKEN;
        if ((c >= 0x21 && c <= 0x7e) || c >= 0x80)
            f |= C_VFIRST | C_VREST;
        if (c == ' ' || c == '\t')
            f |= C_VREST;
        if (alnum || strchr(".:[]-", c))
            f |= C_AUTH;
        if (c >= 0x21 && c <= 0x7e)
            f |= C_TARGET;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-')
            f |= C_CONN;
        cls[c] = f;
    }
}

/* header names the parser knows ------------------------------------------------------ */
/* Lowercase names are shared objects for these, so a head's `lnames` cost nothing to
 * build and compare by identity here. MEMO marks http1._MEMO_NAMES: a line with one of
 * those names (and no longer than LINE_MAX_BYTES) is remembered whole. */
enum { MEMO = 1 };
typedef struct {
    const char *name;
    int flags;
    PyObject *obj;
} known_t;

static known_t known[] = {
    {"accept", MEMO, NULL},
    {"accept-encoding", MEMO, NULL},
    {"accept-language", MEMO, NULL},
    {"accept-ranges", MEMO, NULL},
    {"cache-control", MEMO, NULL},
    {"connection", MEMO, NULL},
    {"content-encoding", MEMO, NULL},
    {"content-length", MEMO, NULL},
    {"content-type", MEMO, NULL},
    {"date", MEMO, NULL},
    {"host", MEMO, NULL},
    {"keep-alive", MEMO, NULL},
    {"pragma", MEMO, NULL},
    {"server", MEMO, NULL},
    {"strict-transport-security", MEMO, NULL},
    {"user-agent", MEMO, NULL},
    {"vary", MEMO, NULL},
    {"x-content-type-options", MEMO, NULL},
    {"x-frame-options", MEMO, NULL},
    /* never remembered: credentials, and names that send a head to llhttp */
    {"authorization", 0, NULL},
    {"proxy-authorization", 0, NULL},
    {"proxy-connection", 0, NULL},
    {"cookie", 0, NULL},
    {"set-cookie", 0, NULL},
    {"transfer-encoding", 0, NULL},
    {"upgrade", 0, NULL},
    {"transfer_encoding", 0, NULL},
    {"content_length", 0, NULL},
    {"te", 0, NULL},
    {"trailer", 0, NULL},
    {"location", 0, NULL},
    {"etag", 0, NULL},
    {"last-modified", 0, NULL},
    {"expires", 0, NULL},
    {"x-request-id", 0, NULL},
};
#define N_KNOWN (sizeof(known) / sizeof(known[0]))
/* The shared objects of the names a head's framing depends on (set at import). */
static PyObject *host_name, *content_length_name, *connection_name;
static PyObject *not_fast[4]; /* names that send a head to llhttp (http1._NOT_FAST) */
static const char *not_fast_names[4] = {
    "transfer-encoding", "upgrade", "transfer_encoding", "content_length"};

/* The known entry for a lowercase name, or NULL. */
static known_t *
find_known(const char *lower, Py_ssize_t n)
{
    for (size_t i = 0; i < N_KNOWN; i++) {
        const char *k = known[i].name;
        if (k[0] == lower[0] && (Py_ssize_t)strlen(k) == n && memcmp(k, lower, n) == 0)
            return &known[i];
    }
    return NULL;
}

#if PY_VERSION_HEX >= 0x030E0000
#define HASH_BYTES(p, n) Py_HashBuffer((p), (n))
#else
#define HASH_BYTES(p, n) _Py_HashBytes((p), (n))
#endif

/* The shared object of a name in `known` (which must hold it). */
static PyObject *
known_name(const char *name)
{
    known_t *k = find_known(name, (Py_ssize_t)strlen(name));
    assert(k != NULL);
    return k->obj;
}

/* memo tables: a line's bytes to what it parsed into ------------------------------------ */
/* Open addressing with twice as many slots as entries, hashed with Python's keyed hash of
 * bytes (SipHash, seeded per process), so chosen lines cannot be made to collide. A full
 * table is emptied before the next entry, the rule of fixedip.bounded.remember. */
typedef struct {
    Py_hash_t hash;
    PyObject *key;   /* the line (bytes) */
    PyObject *value; /* field lines: (field, lname); status lines: (status, reason, version) */
} slot_t;

typedef struct {
    slot_t *slots;
    size_t mask;
    Py_ssize_t used, max;
} memo_t;

static memo_t field_memo, status_memo;

static int
memo_init(memo_t *m, Py_ssize_t max)
{
    size_t n = 1;
    while (n < (size_t)max * 2)
        n <<= 1;
    m->slots = PyMem_Calloc(n, sizeof(slot_t));
    if (m->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    m->mask = n - 1;
    m->used = 0;
    m->max = max;
    return 0;
}

static PyObject *
memo_get(memo_t *m, const char *p, Py_ssize_t n, Py_hash_t h)
{
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        slot_t *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->hash == h && PyBytes_GET_SIZE(s->key) == n &&
            memcmp(PyBytes_AS_STRING(s->key), p, n) == 0)
            return s->value;
    }
}

static void
memo_clear(memo_t *m)
{
    for (size_t i = 0; i <= m->mask; i++) {
        slot_t *s = &m->slots[i];
        if (s->key != NULL) {
            Py_CLEAR(s->key);
            Py_CLEAR(s->value);
        }
    }
    m->used = 0;
}

/* Remember `value` for a line not in the table (the caller looked it up). */
static int
memo_put(memo_t *m, const char *p, Py_ssize_t n, Py_hash_t h, PyObject *value)
{
    if (m->used >= m->max)
        memo_clear(m);
    PyObject *key = PyBytes_FromStringAndSize(p, n);
    if (key == NULL)
        return -1;
    size_t i = (size_t)h & m->mask;
    while (m->slots[i].key != NULL)
        i = (i + 1) & m->mask;
    m->slots[i].hash = h;
    m->slots[i].key = key;
    Py_INCREF(value);
    m->slots[i].value = value;
    m->used++;
    return 0;
}

static PyObject *
memo_keys(memo_t *m)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i <= m->mask; i++) {
        if (m->slots[i].key != NULL && PyList_Append(out, m->slots[i].key) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* constants ------------------------------------------------------------------------- */
static PyObject *v10, *v11; /* "1.0", "1.1" */
static PyObject *methods[7];
static const char *method_names[7] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};

/* field lines ------------------------------------------------------------------------ */
typedef struct {
    PyObject *headers; /* list of (name, value) */
    PyObject *lnames;  /* list of lowercase names */
    PyObject *length;  /* int or None */
    int keep_alive;
} fields_t;

static PyObject *
pair_of(PyObject *a, PyObject *b)
{
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(a);
        Py_DECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

/* Parse one field line data[p:e) into a new (field, lname) pair: NULL with no error set
 * when the one-pass parser leaves the line to llhttp. The pattern is http1._FIELD_LINE_RE:
 * a token, a colon, optional whitespace, then a value that is empty or starts with a
 * visible byte (trailing whitespace is kept). `*memo`: whether the name is on the list
 * of lines that may be remembered. */
static PyObject *
parse_field_line(const char *p, const char *e, int *memo)
{
    const char *q = p;
    while (q < e && (cls[(unsigned char)*q] & C_TOKEN))
        q++;
    if (q == p || q == e || *q != ':')
        return NULL;
    Py_ssize_t nlen = q - p;
    const char *v = q + 1;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    if (v < e) {
        if (!(cls[(unsigned char)*v] & C_VFIRST))
            return NULL;
        for (const char *r = v + 1; r < e; r++)
            if (!(cls[(unsigned char)*r] & C_VREST))
                return NULL;
    }
    char lower[64];
    known_t *k = NULL;
    if (nlen <= (Py_ssize_t)sizeof(lower)) {
        for (Py_ssize_t i = 0; i < nlen; i++)
            lower[i] = Py_TOLOWER(p[i]);
        k = find_known(lower, nlen);
    }
    *memo = k != NULL && (k->flags & MEMO);
    PyObject *lname;
    if (k != NULL) {
        lname = Py_NewRef(k->obj);
    }
    else {
        lname = PyBytes_FromStringAndSize(NULL, nlen);
        if (lname == NULL)
            return NULL;
        char *l = PyBytes_AS_STRING(lname);
        for (Py_ssize_t i = 0; i < nlen; i++)
            l[i] = Py_TOLOWER(p[i]);
    }
    PyObject *name = PyBytes_FromStringAndSize(p, nlen);
    PyObject *value = name ? PyBytes_FromStringAndSize(v, e - v) : NULL;
    if (value == NULL) {
        Py_XDECREF(name);
        Py_DECREF(lname);
        return NULL;
    }
    PyObject *field = pair_of(name, value);
    if (field == NULL) {
        Py_DECREF(lname);
        return NULL;
    }
    return pair_of(field, lname);
}

/* Connection tokens of one value, lowered and split on commas: 0 declines (a token that
 * is not [a-z0-9-]+, or "upgrade"), else 1 with close and keep updated. */
static int
connection_tokens(PyObject *value, int *close, int *keep)
{
    const char *p = PyBytes_AS_STRING(value), *e = p + PyBytes_GET_SIZE(value);
    for (;;) {
        const char *c = memchr(p, ',', e - p);
        const char *t = p, *te = c ? c : e;
        while (t < te && (*t == ' ' || *t == '\t'))
            t++;
        while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if (te == t)
            return 0;
        char tok[16];
        Py_ssize_t n = te - t;
        for (const char *r = t; r < te; r++)
            if (!(cls[(unsigned char)Py_TOLOWER(*r)] & C_CONN))
                return 0;
        if (n < (Py_ssize_t)sizeof(tok)) {
            for (Py_ssize_t i = 0; i < n; i++)
                tok[i] = Py_TOLOWER(t[i]);
            if (n == 7 && memcmp(tok, "upgrade", 7) == 0)
                return 0;
            if (n == 5 && memcmp(tok, "close", 5) == 0)
                *close = 1;
            if (n == 10 && memcmp(tok, "keep-alive", 10) == 0)
                *keep = 1;
        }
        if (c == NULL)
            return 1;
        p = c + 1;
    }
}

static int
bytes_is(PyObject *value, const char *s)
{
    Py_ssize_t n = (Py_ssize_t)strlen(s);
    return PyBytes_GET_SIZE(value) == n && memcmp(PyBytes_AS_STRING(value), s, n) == 0;
}

/* The (field, lname) pair of one line: remembered, or parsed (and remembered when its
 * name is on the list). A new reference; NULL with no error set declines. */
static PyObject *
field_line(const char *line, const char *eol)
{
    Py_ssize_t n = eol - line;
    Py_hash_t h = -1;
    if (n <= LINE_MAX_BYTES) {
        h = HASH_BYTES(line, n);
        PyObject *seen = memo_get(&field_memo, line, n, h);
        if (seen != NULL)
            return Py_NewRef(seen);
    }
    int memo;
    PyObject *pair = parse_field_line(line, eol, &memo);
    if (pair != NULL && memo && n <= LINE_MAX_BYTES &&
        memo_put(&field_memo, line, n, h, pair) < 0)
        Py_CLEAR(pair);
    return pair;
}

/* The field lines in data[p:e) (each ending in CRLF, the last CRLF excluded), judged as
 * http1._field_lines and _fast_fields judge them. Returns 1 with `out` filled, 0 to
 * decline, -1 on a Python error. */
static int
parse_fields(const char *p, const char *e, int http11, fields_t *out)
{
    const char *starts[MAX_HEADERS + 1];
    Py_ssize_t count = 0;
    for (const char *q = p;;) {
        if (count == MAX_HEADERS)
            return 0;
        starts[count++] = q;
        const char *r = q;
        while (r + 1 < e && !(r[0] == '\r' && r[1] == '\n'))
            r++;
        if (r + 1 >= e)
            break;
        q = r + 2;
    }
    starts[count] = e + 2; /* where a line after the last would start */
    PyObject *headers = PyList_New(count);
    PyObject *lnames = headers ? PyList_New(count) : NULL;
    if (lnames == NULL)
        goto error;
    Py_ssize_t hosts = 0, cl_at = -1, conn_at = -1, conns = 0, cls_seen = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = field_line(starts[i], starts[i + 1] - 2);
        if (pair == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto decline;
        }
        PyObject *lname = PyTuple_GET_ITEM(pair, 1);
        PyList_SET_ITEM(headers, i, Py_NewRef(PyTuple_GET_ITEM(pair, 0)));
        PyList_SET_ITEM(lnames, i, Py_NewRef(lname));
        Py_DECREF(pair); /* the lists and the memo hold what it held */
        if (lname == host_name)
            hosts++;
        else if (lname == content_length_name) {
            cls_seen++;
            if (cl_at < 0)
                cl_at = i;
        }
        else if (lname == connection_name) {
            if (conn_at < 0)
                conn_at = i;
            conns++;
        }
        else if (lname == not_fast[0] || lname == not_fast[1] || lname == not_fast[2] ||
                 lname == not_fast[3])
            goto decline;
    }
    if (hosts > 1 || cls_seen > 1)
        goto decline;
    long long length = -1;
    if (cl_at >= 0) {
        PyObject *value = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, cl_at), 1);
        const char *d = PyBytes_AS_STRING(value);
        Py_ssize_t n = PyBytes_GET_SIZE(value);
        if (n == 0 || n > CONTENT_LENGTH_DIGITS)
            goto decline;
        length = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (d[i] < '0' || d[i] > '9')
                goto decline;
            length = length * 10 + (d[i] - '0');
        }
    }
    int close = 0, keep = 0;
    if (conn_at >= 0) {
        PyObject *value = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, conn_at), 1);
        if (conns == 1 && (bytes_is(value, "keep-alive") || bytes_is(value, "Keep-Alive")))
            keep = 1;
        else if (conns == 1 && (bytes_is(value, "close") || bytes_is(value, "Close")))
            close = 1;
        else {
            for (Py_ssize_t i = conn_at; i < count; i++) {
                if (PyList_GET_ITEM(lnames, i) != connection_name)
                    continue;
                value = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, i), 1);
                if (!connection_tokens(value, &close, &keep))
                    goto decline;
            }
        }
    }
    out->length = length < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(length);
    if (out->length == NULL)
        goto error;
    out->headers = headers;
    out->lnames = lnames;
    out->keep_alive = http11 ? !close : keep;
    return 1;
decline:
    Py_DECREF(headers);
    Py_DECREF(lnames);
    return 0;
error:
    Py_XDECREF(headers);
    Py_XDECREF(lnames);
    return -1;
}

/* The fields of a head whose first line ends at `eol` and whose blank line starts at
 * `blank` (the CRLF CRLF): http1._field_lines(data, eol + 2, blank + 2). */
static int
head_fields(const char *data, Py_ssize_t eol, Py_ssize_t blank, int http11, fields_t *out)
{
    if (blank > eol) {
        if (blank <= eol + 2)
            return 0; /* one empty line: never a field */
        return parse_fields(data + eol + 2, data + blank, http11, out);
    }
    out->headers = PyList_New(0);
    out->lnames = out->headers ? PyList_New(0) : NULL;
    if (out->lnames == NULL) {
        Py_XDECREF(out->headers);
        Py_XDECREF(out->lnames);
        return -1;
    }
    out->length = Py_NewRef(Py_None);
    out->keep_alive = http11;
    return 1;
}

/* Where the first CRLF CRLF lying wholly within data[pos:end) starts, or -1. */
static Py_ssize_t
find_blank(const char *data, Py_ssize_t pos, Py_ssize_t end)
{
    const char *p = data + pos, *e = data + end;
    while (e - p >= 4) {
        const char *r = memchr(p, '\r', e - p - 3);
        if (r == NULL)
            return -1;
        if (r[1] == '\n' && r[2] == '\r' && r[3] == '\n')
            return r - data;
        p = r + 1;
    }
    return -1;
}

/* Where the first CRLF in data[pos:end) starts, or -1. */
static Py_ssize_t
find_crlf(const char *data, Py_ssize_t pos, Py_ssize_t end)
{
    const char *p = data + pos, *e = data + end;
    while (e - p >= 2) {
        const char *r = memchr(p, '\r', e - p - 1);
        if (r == NULL)
            return -1;
        if (r[1] == '\n')
            return r - data;
        p = r + 1;
    }
    return -1;
}

/* The arguments (data, pos, limit) of the two parsers, and where the head they ask for
 * lies: data is bytes, the head starts at data[pos] and its CRLF CRLF (at `*blank`) lies
 * wholly before `limit`, as bytes.find(b"\r\n\r\n", pos, limit) reads them (limit
 * clipped to the end); `*eol` is where its first line ends. 1 when found, 0 when there
 * is no whole head there, -1 on a Python error. */
static int
head_bounds(const char *fn, PyObject *const *args, Py_ssize_t nargs, const char **data,
            Py_ssize_t *pos, Py_ssize_t *blank, Py_ssize_t *eol)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyLong_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "%s(data: bytes, pos: int, limit: int)", fn);
        return -1;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    int overflow;
    long long start = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (start == -1 && PyErr_Occurred())
        return -1;
    long long end = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (end == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0)
        end = size;
    if (start < 0 || end < 0 || overflow < 0) {
        PyErr_SetString(PyExc_ValueError, "pos and limit must not be negative");
        return -1;
    }
    if (start > size)
        return 0;
    *data = PyBytes_AS_STRING(args[0]);
    *pos = (Py_ssize_t)start;
    *blank = find_blank(*data, *pos, end > size ? size : (Py_ssize_t)end);
    if (*blank < 0)
        return 0;
    *eol = find_crlf(*data, *pos, *blank + 2);
    return 1;
}

/* (first, second, version, headers, lnames, length, keep_alive, end): steals `second`. */
static PyObject *
head_tuple(PyObject *first, PyObject *second, PyObject *version, fields_t *f, Py_ssize_t end)
{
    PyObject *stop = PyLong_FromSsize_t(end);
    PyObject *t = stop ? PyTuple_New(8) : NULL;
    if (t == NULL) {
        Py_XDECREF(stop);
        Py_DECREF(second);
        Py_DECREF(f->headers);
        Py_DECREF(f->lnames);
        Py_DECREF(f->length);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, Py_NewRef(first));
    PyTuple_SET_ITEM(t, 1, second);
    PyTuple_SET_ITEM(t, 2, Py_NewRef(version));
    PyTuple_SET_ITEM(t, 3, f->headers);
    PyTuple_SET_ITEM(t, 4, f->lnames);
    PyTuple_SET_ITEM(t, 5, f->length);
    PyTuple_SET_ITEM(t, 6, Py_NewRef(f->keep_alive ? Py_True : Py_False));
    PyTuple_SET_ITEM(t, 7, stop);
    return t;
}

/* parse_request(data, pos, limit) ------------------------------------------------------ */
static PyObject *
parse_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *data;
    Py_ssize_t pos, blank, eol;
    int found = head_bounds("parse_request", args, nargs, &data, &pos, &blank, &eol);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    const char *p = data + pos, *e = data + eol;
    PyObject *method = NULL;
    for (int i = 0; i < 7; i++) {
        Py_ssize_t n = (Py_ssize_t)strlen(method_names[i]);
        if (e - p > n && memcmp(p, method_names[i], n) == 0 && p[n] == ' ') {
            method = methods[i];
            p += n + 1;
            break;
        }
    }
    if (method == NULL)
        Py_RETURN_NONE;
    const char *target = p;
    if (e - p >= 7 && memcmp(p, "http://", 7) == 0) {
        p += 7;
        const char *a = p;
        while (p < e && (cls[(unsigned char)*p] & C_AUTH))
            p++;
        if (p == a)
            Py_RETURN_NONE;
    }
    if (p == e || *p != '/')
        Py_RETURN_NONE;
    while (p < e && (cls[(unsigned char)*p] & C_TARGET))
        p++;
    const char *target_end = p;
    if (e - p != 9 || memcmp(p, " HTTP/1.", 8) != 0 || (p[8] != '0' && p[8] != '1'))
        Py_RETURN_NONE;
    int http11 = p[8] == '1';
    fields_t f;
    int ok = head_fields(data, eol, blank, http11, &f);
    if (ok <= 0)
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *t = PyBytes_FromStringAndSize(target, target_end - target);
    if (t == NULL) {
        Py_DECREF(f.headers);
        Py_DECREF(f.lnames);
        Py_DECREF(f.length);
        return NULL;
    }
    return head_tuple(method, t, http11 ? v11 : v10, &f, blank + 4);
}

/* parse_response(data, pos, limit) ----------------------------------------------------- */
/* (status, reason, version) of a status line: http1._STATUS_LINE_RE. */
static PyObject *
parse_status_line(const char *p, const char *e)
{
    if (e - p < 13 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != ' ' || p[9] < '2' || p[9] > '9' || p[10] < '0' || p[10] > '9' ||
        p[11] < '0' || p[11] > '9' || p[12] != ' ')
        return NULL;
    const char *r = p + 13;
    if (r < e) {
        if (!(cls[(unsigned char)*r] & C_VFIRST))
            return NULL;
        for (const char *q = r + 1; q < e; q++)
            if (!(cls[(unsigned char)*q] & C_VREST))
                return NULL;
    }
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    PyObject *code = PyLong_FromLong(status);
    PyObject *reason = code ? PyBytes_FromStringAndSize(r, e - r) : NULL;
    PyObject *t = reason ? PyTuple_New(3) : NULL;
    if (t == NULL) {
        Py_XDECREF(code);
        Py_XDECREF(reason);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, code);
    PyTuple_SET_ITEM(t, 1, reason);
    PyTuple_SET_ITEM(t, 2, Py_NewRef(p[7] == '1' ? v11 : v10));
    return t;
}

static PyObject *
parse_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *data;
    Py_ssize_t pos, blank, eol;
    int found = head_bounds("parse_response", args, nargs, &data, &pos, &blank, &eol);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    Py_ssize_t n = eol - pos;
    Py_hash_t h = -1;
    PyObject *first = NULL;
    if (n <= LINE_MAX_BYTES) {
        h = HASH_BYTES(data + pos, n);
        first = memo_get(&status_memo, data + pos, n, h);
    }
    if (first != NULL)
        Py_INCREF(first);
    else {
        first = parse_status_line(data + pos, data + eol);
        if (first == NULL)
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        if (n <= LINE_MAX_BYTES && memo_put(&status_memo, data + pos, n, h, first) < 0) {
            Py_DECREF(first);
            return NULL;
        }
    }
    PyObject *status = PyTuple_GET_ITEM(first, 0), *reason = PyTuple_GET_ITEM(first, 1),
             *version = PyTuple_GET_ITEM(first, 2);
    fields_t f;
    int ok = head_fields(data, eol, blank, version == v11, &f);
    if (ok <= 0) {
        Py_DECREF(first);
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    }
    long code = PyLong_AsLong(status);
    PyObject *out;
    if (f.length == Py_None && code != 204 && code != 304) {
        Py_DECREF(f.headers); /* close-delimited: llhttp's */
        Py_DECREF(f.lnames);
        Py_DECREF(f.length);
        out = Py_NewRef(Py_None);
    }
    else
        out = head_tuple(status, Py_NewRef(reason), version, &f, blank + 4);
    Py_DECREF(first);
    return out;
}

/* forward_head(first_line, headers, lnames, drop, keep, before, after, body) ----------- */
/* Never forwarded whatever the policy: hop-by-hop fields (http1.HOP_BY_HOP), the
 * framing the gateway redoes (Content-Length) and every Proxy-* field (and bare Proxy). */
static int
always_dropped(const char *n, Py_ssize_t len)
{
    switch (len) {
    case 2:
        return memcmp(n, "te", 2) == 0;
    case 5:
        return memcmp(n, "proxy", 5) == 0;
    case 7:
        if (memcmp(n, "trailer", 7) == 0 || memcmp(n, "upgrade", 7) == 0)
            return 1;
        break;
    case 10:
        if (memcmp(n, "connection", 10) == 0 || memcmp(n, "keep-alive", 10) == 0)
            return 1;
        break;
    case 14:
        if (memcmp(n, "content-length", 14) == 0)
            return 1;
        break;
    case 17:
        if (memcmp(n, "transfer-encoding", 17) == 0)
            return 1;
        break;
    }
    return len >= 6 && memcmp(n, "proxy-", 6) == 0;
}

/* A name a sender listed in Connection, as a span of its value (not lowered). */
typedef struct {
    const char *p;
    Py_ssize_t n;
} span_t;

static int
span_is(span_t t, const char *lower, Py_ssize_t n)
{
    if (t.n != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (Py_TOLOWER(t.p[i]) != lower[i])
            return 0;
    return 1;
}

/* The names listed in the Connection fields of `lnames`/`headers` (http1.connection_tokens:
 * split on commas, stripped, lowered; never Host, Content-Length or Transfer-Encoding),
 * minus those dropped anyway. `*spans` is `small` or memory to PyMem_Free. -1 on error. */
static Py_ssize_t
listed_names(PyObject *headers, PyObject *lnames, span_t *small, Py_ssize_t nsmall,
             span_t **spans)
{
    Py_ssize_t n = PyList_GET_SIZE(lnames), count = 0, cap = nsmall;
    *spans = small;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *lk = PyList_GET_ITEM(lnames, i);
        if (lk != connection_name &&
            !(PyBytes_Check(lk) && bytes_is(lk, "connection")))
            continue;
        PyObject *field = PyList_GET_ITEM(headers, i);
        PyObject *value = PyTuple_GET_ITEM(field, 1);
        const char *p = PyBytes_AS_STRING(value), *e = p + PyBytes_GET_SIZE(value);
        for (;;) {
            const char *c = memchr(p, ',', e - p);
            const char *t = p, *te = c ? c : e;
            while (t < te && Py_ISSPACE(*t))
                t++;
            while (te > t && Py_ISSPACE(te[-1]))
                te--;
            char lower[32];
            Py_ssize_t len = te - t;
            int skip = len == 0;
            if (!skip && len <= (Py_ssize_t)sizeof(lower)) {
                for (Py_ssize_t j = 0; j < len; j++)
                    lower[j] = Py_TOLOWER(t[j]);
                skip = always_dropped(lower, len) || (len == 4 && memcmp(lower, "host", 4) == 0);
            }
            if (!skip) {
                if (count == cap) {
                    span_t *grown = PyMem_Malloc(sizeof(span_t) * (size_t)cap * 2);
                    if (grown == NULL) {
                        if (*spans != small)
                            PyMem_Free(*spans);
                        *spans = small;
                        PyErr_NoMemory();
                        return -1;
                    }
                    memcpy(grown, *spans, sizeof(span_t) * (size_t)count);
                    if (*spans != small)
                        PyMem_Free(*spans);
                    *spans = grown;
                    cap *= 2;
                }
                (*spans)[count].p = t;
                (*spans)[count].n = len;
                count++;
            }
            if (c == NULL)
                break;
            p = c + 1;
        }
    }
    return count;
}

static int
check_field(PyObject *field)
{
    if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 2 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(field, 0)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(field, 1))) {
        PyErr_SetString(PyExc_TypeError, "a header is a (bytes, bytes) tuple");
        return -1;
    }
    return 0;
}

static Py_ssize_t
field_size(PyObject *field)
{
    return PyBytes_GET_SIZE(PyTuple_GET_ITEM(field, 0)) +
           PyBytes_GET_SIZE(PyTuple_GET_ITEM(field, 1)) + 4;
}

static char *
put_field(char *w, PyObject *field)
{
    PyObject *k = PyTuple_GET_ITEM(field, 0), *v = PyTuple_GET_ITEM(field, 1);
    memcpy(w, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k));
    w += PyBytes_GET_SIZE(k);
    *w++ = ':';
    *w++ = ' ';
    memcpy(w, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    w += PyBytes_GET_SIZE(v);
    *w++ = '\r';
    *w++ = '\n';
    return w;
}

static PyObject *
forward_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "forward_head() takes 8 arguments");
        return NULL;
    }
    PyObject *line = args[0], *headers = args[1], *lnames = args[2], *drop = args[3],
             *keep = args[4], *before = args[5], *after = args[6], *body = args[7];
    if (!PyBytes_Check(line) || !PyList_Check(headers) || !PyList_Check(lnames) ||
        !PyFrozenSet_CheckExact(drop) || (keep != Py_None && !PyFrozenSet_CheckExact(keep)) ||
        !(PyList_Check(before) || PyTuple_Check(before)) ||
        !(PyList_Check(after) || PyTuple_Check(after)) || !PyBytes_Check(body)) {
        PyErr_SetString(PyExc_TypeError,
                        "forward_head(bytes, list, list, frozenset, frozenset | None, list, "
                        "list, bytes)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(headers);
    if (PyList_GET_SIZE(lnames) != n) {
        PyErr_SetString(PyExc_ValueError, "headers and lnames differ in length");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (check_field(PyList_GET_ITEM(headers, i)) < 0)
            return NULL;
        /* exact types: a subclass's __hash__ or __eq__ could change the lists while
         * PySet_Contains runs, under the pointers taken here */
        if (!PyBytes_CheckExact(PyList_GET_ITEM(lnames, i))) {
            PyErr_SetString(PyExc_TypeError, "a lowercase name is bytes");
            return NULL;
        }
    }
    span_t small[8], *listed;
    Py_ssize_t nlisted = listed_names(headers, lnames, small, 8, &listed);
    if (nlisted < 0)
        return NULL;
    unsigned char kept_small[128];
    unsigned char *kept = n <= 128 ? kept_small : PyMem_Malloc(n);
    PyObject *out = NULL;
    if (kept == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(line) + 4 + PyBytes_GET_SIZE(body);
    int check_drop = PySet_GET_SIZE(drop) > 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *field = PyList_GET_ITEM(headers, i), *lk = PyList_GET_ITEM(lnames, i);
        const char *l = PyBytes_AS_STRING(lk);
        Py_ssize_t len = PyBytes_GET_SIZE(lk);
        int k = !always_dropped(l, len), r;
        for (Py_ssize_t j = 0; k && j < nlisted; j++)
            k = !span_is(listed[j], l, len);
        if (k && check_drop) {
            if ((r = PySet_Contains(drop, lk)) < 0)
                goto done;
            k = !r;
        }
        if (k && keep != Py_None) {
            if ((r = PySet_Contains(keep, lk)) < 0)
                goto done;
            k = r;
        }
        kept[i] = (unsigned char)k;
        if (k)
            size += field_size(field);
    }
    PyObject *sides[2] = {before, after};
    for (int s = 0; s < 2; s++) {
        Py_ssize_t m = PySequence_Fast_GET_SIZE(sides[s]);
        PyObject **items = PySequence_Fast_ITEMS(sides[s]);
        for (Py_ssize_t i = 0; i < m; i++) {
            if (check_field(items[i]) < 0)
                goto done;
            size += field_size(items[i]);
        }
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        goto done;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line));
    w += PyBytes_GET_SIZE(line);
    *w++ = '\r';
    *w++ = '\n';
    Py_ssize_t m = PySequence_Fast_GET_SIZE(before);
    PyObject **items = PySequence_Fast_ITEMS(before);
    for (Py_ssize_t i = 0; i < m; i++)
        w = put_field(w, items[i]);
    for (Py_ssize_t i = 0; i < n; i++)
        if (kept[i])
            w = put_field(w, PyList_GET_ITEM(headers, i));
    m = PySequence_Fast_GET_SIZE(after);
    items = PySequence_Fast_ITEMS(after);
    for (Py_ssize_t i = 0; i < m; i++)
        w = put_field(w, items[i]);
    *w++ = '\r';
    *w++ = '\n';
    memcpy(w, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body));
done:
    if (kept != NULL && kept != kept_small)
        PyMem_Free(kept);
    if (listed != small)
        PyMem_Free(listed);
    return out;
}

/* remembered() ---------------------------------------------------------------------- */
static PyObject *
remembered(PyObject *self, PyObject *unused)
{
    PyObject *fields = memo_keys(&field_memo);
    if (fields == NULL)
        return NULL;
    PyObject *status = memo_keys(&status_memo);
    if (status == NULL) {
        Py_DECREF(fields);
        return NULL;
    }
    return Py_BuildValue("(NN)", fields, status);
}

static PyMethodDef heads_methods[] = {
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL,
     "parse_request(data, pos, limit): the request head starting at data[pos] and ending in "
     "the first CRLF CRLF before `limit`, as (method, target, version, headers, lnames, "
     "content_length, keep_alive, end), `end` where the head's bytes end; None when there "
     "is no whole head there or the one-pass parser leaves it to llhttp."},
    {"parse_response", (PyCFunction)(void (*)(void))parse_response, METH_FASTCALL,
     "parse_response(data, pos, limit): a final response head framed by Content-Length (or "
     "a bodiless 204 or 304) as (status, reason, version, headers, lnames, content_length, "
     "keep_alive, end), or None."},
    {"forward_head", (PyCFunction)(void (*)(void))forward_head, METH_FASTCALL,
     "forward_head(first_line, headers, lnames, drop, keep, before, after, body): the head "
     "as forwarded, in one bytes object: `first_line`, the fields in `before`, the "
     "end-to-end fields (no hop-by-hop, Proxy-*, Content-Length, names listed in "
     "Connection or in `drop`; with `keep`, only its names), the fields in `after`, the "
     "blank line, then `body`."},
    {"remembered", remembered, METH_NOARGS,
     "remembered(): (field lines, status lines) the memo tables hold now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef heads_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_heads",
    .m_doc = "HTTP/1.1 heads parsed and serialised in one pass (see fixedip.proto.http1).",
    .m_size = -1,
    .m_methods = heads_methods,
};

PyMODINIT_FUNC
PyInit__heads(void)
{
    init_classes();
    if (field_memo.slots == NULL && memo_init(&field_memo, LINES_MAX) < 0)
        return NULL;
    if (status_memo.slots == NULL && memo_init(&status_memo, STATUS_LINES_MAX) < 0)
        return NULL;
    for (size_t i = 0; i < N_KNOWN; i++) {
        if (known[i].obj == NULL &&
            (known[i].obj = PyBytes_FromString(known[i].name)) == NULL)
            return NULL;
    }
    host_name = known_name("host");
    content_length_name = known_name("content-length");
    connection_name = known_name("connection");
    for (int i = 0; i < 4; i++)
        not_fast[i] = known_name(not_fast_names[i]);
    for (int i = 0; i < 7; i++) {
        if (methods[i] == NULL && (methods[i] = PyUnicode_InternFromString(method_names[i])) == NULL)
            return NULL;
    }
    if (v10 == NULL && ((v10 = PyUnicode_InternFromString("1.0")) == NULL ||
                        (v11 = PyUnicode_InternFromString("1.1")) == NULL))
        return NULL;
    return PyModule_Create(&heads_module);
}
