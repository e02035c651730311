/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * analyzer.dissect._prefilter: the transport pre-filter's per-frame classification and flow bookkeeping, compiled.
 *
 * It computes, frame by frame, exactly what prefilter_numpy.prefilter computes with numpy over a whole batch
 * (analyzer/dissect/prefilter_numpy.py holds the reference, transport.py the description of every rule; tests
 * compare both):
 * Ethernet (+ one 802.1Q tag) / Linux cooked v1, IPv4 without options or fragments, TCP or UDP -> class, flow
 * hash, flags, payload start and length, "looks like DCE/RPC", ports, addresses, seq/ack; and which frames the
 * per-frame path must see. The flow sets (flows met, flows whose first payload was offered, flows the sink
 * follows) are open-addressing hash sets here instead of sorted numpy arrays, with the same forgetting rule.
 *
 * The header bytes are read exactly where numpy reads them: 38 bytes from frame offset + 12, the offset clamped
 * to the last position where 38 bytes fit (numpy's ``np.minimum(offset, top)``); the payload's first three
 * bytes at a position clamped to the last one with three bytes after it. So no read leaves the buffer whatever
 * the offsets and lengths, and the answers are numpy's, bit for bit; a frame whose header bytes do not all fit
 * goes to the per-frame path. The GIL is released inside the loop.
 *
 * FlowRows groups a batch's TCP rows by flow for Transport._run (the later rows of flows that turn interesting
 * inside the batch). Every array argument is taken through the buffer protocol (array.array on the pcap path,
 * numpy arrays from the other readers), so the compiled path never needs numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HASH_MULT 0x9E3779B97F4A7C15ULL
#define HEADER_SPAN 50
#define PROTO_ICMP 1
#define PROTO_IPIP 4
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_IPV6_IN_IP 41
#define MIN_NOTIFY_PORT 1024
#define DCERPC_CL_VERSION 4
#define DCERPC_CL_MAX_PTYPE 10
#define DCERPC_CL_HEADER_LEN 80
#define FAST_FIELDS 10
#define PREFETCH_AHEAD 8

/* ------------------------------------------------------------------------------------------- a set of uint64 */

typedef struct {
    uint64_t *keys; /* 0 marks an empty slot; the key 0 itself is kept in has_zero */
    size_t cap;     /* a power of two, or 0 before the first insert */
    size_t n;       /* keys held, has_zero included */
    int has_zero;
} hset;

static inline size_t slot_of(uint64_t key, size_t cap)
{
    /* Fibonacci hashing: the flow hash's low bits depend on few input bits, the product's high bits on all */
    return (size_t)((key * HASH_MULT) >> 32) & (cap - 1);
}

static int hset_contains(const hset *s, uint64_t key)
{
    if (key == 0)
        return s->has_zero;
    if (!s->cap)
        return 0;
    size_t i = slot_of(key, s->cap);
    for (;;) {
        uint64_t k = s->keys[i];
        if (k == key)
            return 1;
        if (k == 0)
            return 0;
        i = (i + 1) & (s->cap - 1);
    }
}

static int hset_grow(hset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1024;
    uint64_t *keys = calloc(cap, sizeof(uint64_t));
    if (!keys)
        return -1;
    for (size_t j = 0; j < s->cap; j++) {
        uint64_t k = s->keys[j];
        if (!k)
            continue;
        size_t i = slot_of(k, cap);
        while (keys[i])
            i = (i + 1) & (cap - 1);
        keys[i] = k;
    }
    free(s->keys);
    s->keys = keys;
    s->cap = cap;
    return 0;
}

/* 1: added, 0: was there, -1: out of memory */
static int hset_add(hset *s, uint64_t key)
{
    if (key == 0) {
        if (s->has_zero)
            return 0;
        s->has_zero = 1;
        s->n++;
        return 1;
    }
    if ((s->n + 1) * 4 > s->cap * 3 && hset_grow(s) < 0) /* load factor <= 3/4 */
        return -1;
    size_t i = slot_of(key, s->cap);
    for (;;) {
        uint64_t k = s->keys[i];
        if (k == key)
            return 0;
        if (k == 0)
            break;
        i = (i + 1) & (s->cap - 1);
    }
    s->keys[i] = key;
    s->n++;
    return 1;
}

static void hset_clear(hset *s)
{
    free(s->keys);
    s->keys = NULL;
    s->cap = 0;
    s->n = 0;
    s->has_zero = 0;
}

/* ------------------------------------------------------------------------------------------- FlowState */

typedef struct {
    PyObject_HEAD
    hset seen;      /* flows met so far */
    hset seen_data; /* flows whose first payload was offered */
    hset followed;  /* flows the sink follows */
    Py_ssize_t max_remembered;
    int busy; /* a classify() runs on these sets without the GIL: no other call may touch them meanwhile */
} FlowState;

static int FlowState_init(FlowState *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_remembered", NULL};
    Py_ssize_t max_remembered;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &max_remembered))
        return -1;
    hset_clear(&self->seen);
    hset_clear(&self->seen_data);
    hset_clear(&self->followed);
    self->max_remembered = max_remembered;
    self->busy = 0;
    return 0;
}

static void FlowState_dealloc(FlowState *self)
{
    hset_clear(&self->seen);
    hset_clear(&self->seen_data);
    hset_clear(&self->followed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_idle(FlowState *st)
{
    if (st->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FlowState in use by another thread's classify()");
        return -1;
    }
    return 0;
}

static PyObject *FlowState_follow(FlowState *self, PyObject *arg)
{
    Py_buffer v;
    if (check_idle(self) < 0)
        return NULL;
    if (PyObject_GetBuffer(arg, &v, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const uint64_t *h = (const uint64_t *)v.buf;
    Py_ssize_t n = v.len / 8;
    int failed = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (hset_add(&self->followed, h[i]) < 0) {
            failed = 1;
            break;
        }
    PyBuffer_Release(&v);
    if (failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *FlowState_sizes(FlowState *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("nnn", (Py_ssize_t)self->seen.n, (Py_ssize_t)self->seen_data.n,
                         (Py_ssize_t)self->followed.n);
}

static PyMethodDef FlowState_methods[] = {
    {"follow", (PyCFunction)FlowState_follow, METH_O, "follow(uint64 array): add flow hashes the sink follows"},
    {"sizes", (PyCFunction)FlowState_sizes, METH_NOARGS, "sizes() -> (seen, seen_data, followed) set sizes"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FlowStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "analyzer.dissect._prefilter.FlowState",
    .tp_doc = PyDoc_STR("FlowState(max_remembered): the pre-filter's flow sets, kept between batches"),
    .tp_basicsize = sizeof(FlowState),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FlowState_init,
    .tp_dealloc = (destructor)FlowState_dealloc,
    .tp_methods = FlowState_methods,
};

/* ------------------------------------------------------------------------------------------- classify */

static inline uint64_t be64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* one unaligned load; a byte loop here cost half of the function's time */
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(v);
#else
    v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
#endif
}

static inline int ip_or_vlan(uint64_t ethertype)
{
    return ethertype == 0x0800 || ethertype == 0x86DD || ethertype == 0x8100 || ethertype == 0x88A8 ||
           ethertype == 0x9100;
}

static int get_in(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes, %zd needed", name, view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int get_out(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: output buffer of %zd bytes, %zd needed", name, view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Remember the batch's fresh flows in ``s`` as prefilter_numpy._remember does: when the set would pass
 * ``max`` it is replaced by the fresh flows alone. The fresh flows are in ``s`` already (added on the way). */
static int remember(hset *s, size_t before, const uint64_t *fresh, size_t nfresh, Py_ssize_t max)
{
    if (!nfresh || before + nfresh <= (size_t)max) /* no fresh flow: numpy leaves the set as it is, even when a
                                                     * previous batch alone left it over ``max`` */
        return 0;
    hset_clear(s);
    for (size_t i = 0; i < nfresh; i++)
        if (hset_add(s, fresh[i]) < 0)
            return -1;
    return 0;
}

PyDoc_STRVAR(classify_doc,
"classify(raw, offset, caplen, linktype, time, ports, state, selected, tcp_rows, tcp_hash, tcp_wanted, fields)\n"
"-> (n_selected, n_tcp, fast)\n\n"
"The pre-filter over one batch of n frames (offset, caplen int64; linktype int32; time float64; raw: the batch\n"
"buffer, at least 50 bytes). ``ports``: 65536 bytes, non-zero for a DCE/RPC port the sink knows, or None.\n"
"``state``: a FlowState, updated. Writes the rows the per-frame path must see (int64, in order), the TCP rows\n"
"(int64) with their flow hash (uint64) and 'wanted' flag (uint8: control flags or payload); ``fields`` (n * 10\n"
"int64) is scratch space. ``fast``: a dict, for the selected well-formed TCP rows, of row -> (payload start,\n"
"payload length, time, source, source port, destination, destination port, seq, flags, ack). Every output\n"
"holds n entries.");

static PyObject *classify(PyObject *self, PyObject *args)
{
    PyObject *o_raw, *o_off, *o_cap, *o_lt, *o_time, *o_ports, *o_state, *o_sel, *o_rows, *o_hash, *o_wanted, *o_fast;
    if (!PyArg_ParseTuple(args, "OOOOOOO!OOOOO", &o_raw, &o_off, &o_cap, &o_lt, &o_time, &o_ports, &FlowStateType,
                          &o_state, &o_sel, &o_rows, &o_hash, &o_wanted, &o_fast))
        return NULL;
    FlowState *st = (FlowState *)o_state;
    if (check_idle(st) < 0)
        return NULL;
    Py_buffer raw, voff, vcap, vlt, vtime, vports, vsel, vrows, vhash, vwanted, vfast;
    Py_buffer *held[11];
    int nheld = 0;
    PyObject *result = NULL;
    uint64_t *fresh_seen = NULL, *fresh_data = NULL;

#define HOLD(call, view) \
    do {                 \
        if ((call) < 0)  \
            goto done;   \
        held[nheld++] = &(view); \
    } while (0)

    if (PyObject_GetBuffer(o_raw, &raw, PyBUF_SIMPLE) < 0)
        return NULL;
    held[nheld++] = &raw;
    if (raw.len < HEADER_SPAN) {
        PyErr_SetString(PyExc_ValueError, "classify: a buffer shorter than one header");
        goto done;
    }
    HOLD(PyObject_GetBuffer(o_off, &voff, PyBUF_C_CONTIGUOUS), voff);
    const Py_ssize_t n = voff.len / 8;
    HOLD(get_in(o_cap, &vcap, n * 8, "caplen"), vcap);
    HOLD(get_in(o_lt, &vlt, n * 4, "linktype"), vlt);
    HOLD(get_in(o_time, &vtime, n * 8, "time"), vtime);
    const unsigned char *ports = NULL;
    if (o_ports != Py_None) {
        HOLD(get_in(o_ports, &vports, 65536, "ports"), vports);
        ports = (const unsigned char *)vports.buf;
    }
    HOLD(get_out(o_sel, &vsel, n * 8, "selected"), vsel);
    HOLD(get_out(o_rows, &vrows, n * 8, "tcp_rows"), vrows);
    HOLD(get_out(o_hash, &vhash, n * 8, "tcp_hash"), vhash);
    HOLD(get_out(o_wanted, &vwanted, n, "tcp_wanted"), vwanted);
    HOLD(get_out(o_fast, &vfast, n * 8 * FAST_FIELDS, "fast"), vfast);
    fresh_seen = malloc((n ? n : 1) * sizeof(uint64_t));
    fresh_data = malloc((n ? n : 1) * sizeof(uint64_t));
    if (!fresh_seen || !fresh_data) {
        PyErr_NoMemory();
        goto done;
    }

    const unsigned char *b = (const unsigned char *)raw.buf;
    const int64_t len = raw.len;
    const int64_t top = len - HEADER_SPAN;  /* last frame offset whose bytes 12..49 are in the buffer */
    const int64_t last_start = len - 3;     /* last position with three bytes after it */
    const int64_t *offset = (const int64_t *)voff.buf, *caplen = (const int64_t *)vcap.buf;
    const int32_t *linktype = (const int32_t *)vlt.buf;
    int64_t *sel = (int64_t *)vsel.buf, *rows = (int64_t *)vrows.buf, *fast = (int64_t *)vfast.buf;
    uint64_t *hashes = (uint64_t *)vhash.buf;
    uint8_t *wanted = (uint8_t *)vwanted.buf;
    Py_ssize_t nsel = 0, nrows = 0, nfast = 0;
    size_t nfresh_seen = 0, nfresh_data = 0;
    const size_t seen_before = st->seen.n, data_before = st->seen_data.n;
    int oom = 0;

    st->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
#if defined(__GNUC__)
        /* The frame headers are scattered over the capture (one per ~1 KB here): without a prefetch the loop
         * waits for each one in turn. */
        if (i + PREFETCH_AHEAD < n) {
            int64_t ahead = offset[i + PREFETCH_AHEAD];
            if (ahead >= 0) {
                ahead = ahead < top ? ahead : top;
                __builtin_prefetch(b + ahead + 12);
                __builtin_prefetch(b + ahead + 49);
            }
        }
#endif
        int64_t off = offset[i], cap = caplen[i];
        const int32_t lt = linktype[i];
        if (off < 0) { /* never from a walker; numpy would index from the end: the per-frame path decides */
            sel[nsel++] = i;
            continue;
        }
        if (off > len) /* never from a walker either; reads clamp the same, and no sum below can overflow */
            off = len;
        const unsigned char *r = b + 12 + (off < top ? off : top);
        const uint64_t outer_type = ((uint64_t)r[0] << 8) | r[1];
        const int vlan = lt == 1 && outer_type == 0x8100 && cap >= 18;
        const int cooked = lt == 113 && cap >= 16;
        const int framed = (lt == 1 && cap >= 14) || cooked;
        if (vlan || cooked) {
            const int shift = vlan ? 4 : 2;
            off += shift;
            cap -= shift;
            r = b + 12 + (off < top ? off : top);
        }
        if (off > top) {
            /* Fewer than 38 header bytes left in the buffer (a short frame at the end of the file or of a gzip
             * window): the clamped read above saw another frame's bytes, so only the per-frame path can tell
             * what this one is (as numpy's ``framed &= offset <= top``). */
            sel[nsel++] = i;
            continue;
        }
        const uint64_t w12 = be64(r), w20 = be64(r + 8);
        const uint64_t ethertype = w12 >> 48;
        const int ipv4 = framed && ethertype == 0x0800 && cap >= 34 && ((w12 >> 40) & 0xFF) == 0x45 &&
                         ((w20 >> 48) & 0x3FFF) == 0;
        const unsigned proto = (unsigned)((w20 >> 32) & 0xFF);
        const int64_t ip_total = (int64_t)((w12 >> 16) & 0xFFFF);
        const int tcp = ipv4 && proto == PROTO_TCP && cap >= 54;
        const int udp = ipv4 && proto == PROTO_UDP && cap >= 42;
        const int drop = (framed && !ip_or_vlan(ethertype)) ||
                         (ipv4 && proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP &&
                          proto != PROTO_IPIP && proto != PROTO_IPV6_IN_IP);
        if (tcp) {
            const uint64_t w26 = be64(r + 14), w34 = be64(r + 22), w42 = be64(r + 30);
            const int64_t ip_end = ip_total + 14 < cap ? ip_total + 14 : cap;
            const uint64_t src = w26 >> 32, dst = w26 & 0xFFFFFFFFULL;
            const uint64_t sport = w34 >> 48, dport = (w34 >> 32) & 0xFFFF;
            const int64_t data_offset = (int64_t)((w42 >> 28) & 0xF) * 4;
            const unsigned flags = (unsigned)((w42 >> 16) & 0xFF);
            const int64_t pstart = data_offset + 34;
            const int64_t plen = ip_end - pstart;
            const uint64_t ea = src << 16 | sport, eb = dst << 16 | dport;
            const uint64_t h = ((ea < eb ? ea : eb) * HASH_MULT) ^ (ea < eb ? eb : ea);
            const int has_data = plen > 0;
            const int control = (flags & 0x07) != 0;
            int64_t at = off + pstart;
            if (at > last_start)
                at = last_start;
            int interesting = plen >= 3 && b[at] == 5 && b[at + 1] <= 1 && b[at + 2] <= 20;
            if (!interesting && ports)
                interesting = ports[sport] || ports[dport];
            if (!interesting && st->followed.n)
                interesting = hset_contains(&st->followed, h);
            int take = control || (has_data && interesting);
            int added = hset_add(&st->seen, h);
            if (added > 0) {
                fresh_seen[nfresh_seen++] = h;
                take = 1;
            }
            if (has_data) {
                int first = hset_add(&st->seen_data, h);
                if (first > 0) {
                    fresh_data[nfresh_data++] = h;
                    take = 1;
                }
                if (first < 0)
                    added = -1;
            }
            if (added < 0) {
                oom = 1;
                break;
            }
            rows[nrows] = i;
            hashes[nrows] = h;
            wanted[nrows] = (uint8_t)(control || has_data);
            nrows++;
            if (take) {
                sel[nsel++] = i;
                if (data_offset >= 20 && plen >= 0) {
                    int64_t *f = fast + nfast * FAST_FIELDS;
                    f[0] = i;
                    f[1] = off + pstart;
                    f[2] = plen;
                    f[3] = (int64_t)src;
                    f[4] = (int64_t)sport;
                    f[5] = (int64_t)dst;
                    f[6] = (int64_t)dport;
                    f[7] = (int64_t)(w34 & 0xFFFFFFFFULL);
                    f[8] = flags;
                    f[9] = (int64_t)(w42 >> 32);
                    nfast++;
                }
            }
        } else if (udp) {
            const uint64_t w34 = be64(r + 22), w42 = be64(r + 30);
            const uint64_t sport = w34 >> 48, dport = (w34 >> 32) & 0xFFFF;
            const int clean = sport >= MIN_NOTIFY_PORT && dport >= MIN_NOTIFY_PORT;
            const int64_t payload = (ip_total + 14 < cap ? ip_total + 14 : cap) - 42;
            const int cl_rpc = payload >= DCERPC_CL_HEADER_LEN && (w42 >> 56) == DCERPC_CL_VERSION &&
                               ((w42 >> 48) & 0xFF) <= DCERPC_CL_MAX_PTYPE;
            if (clean && !cl_rpc)
                sel[nsel++] = i;
        } else if (!drop) {
            sel[nsel++] = i;
        }
    }
    if (!oom && (remember(&st->seen, seen_before, fresh_seen, nfresh_seen, st->max_remembered) < 0 ||
                 remember(&st->seen_data, data_before, fresh_data, nfresh_data, st->max_remembered) < 0))
        oom = 1;
    Py_END_ALLOW_THREADS
    st->busy = 0;

    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    /* The parsed fields as the per-frame path takes them, {row: (start, length, time, src, sport, dst, dport, seq,
     * flags, ack)}, built here: from Python (tolist of each field, zip, dict) it cost ~30 % more than numpy's
     * tolist did, ~0.3 ms per 65,536-frame batch of big.pcap. */
    PyObject *fast_rows = PyDict_New();
    if (!fast_rows)
        goto done;
    const double *tm = (const double *)vtime.buf;
    for (Py_ssize_t k = 0; k < nfast; k++) {
        const int64_t *f = fast + k * FAST_FIELDS;
        PyObject *key = PyLong_FromLongLong(f[0]);
        PyObject *value = PyTuple_New(FAST_FIELDS);
        int bad = !key || !value;
        for (int j = 1; j < FAST_FIELDS && !bad; j++) {
            /* the tuple leaves out the row and puts the time third */
            PyObject *item = PyLong_FromLongLong(f[j]);
            bad = !item;
            if (item)
                PyTuple_SET_ITEM(value, j < 3 ? j - 1 : j, item);
        }
        if (!bad) {
            PyObject *when = PyFloat_FromDouble(tm[f[0]]);
            bad = !when;
            if (when)
                PyTuple_SET_ITEM(value, 2, when);
        }
        if (bad || PyDict_SetItem(fast_rows, key, value) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(fast_rows);
            goto done;
        }
        Py_DECREF(key);
        Py_DECREF(value);
    }
    result = Py_BuildValue("nnN", nsel, nrows, fast_rows);
done:
    free(fresh_seen);
    free(fresh_data);
    while (nheld > 0)
        PyBuffer_Release(held[--nheld]);
    return result;
#undef HOLD
}

/* ------------------------------------------------------------------------------------------- FlowRows */

/* The later rows of flows that turn interesting inside a batch (Transport._run): the batch's TCP rows grouped by
 * flow hash once, so that each flow the sink starts to follow costs a hash lookup and a binary search, not a pass
 * over the batch's ~60,000 TCP rows (2,000 flows turn interesting in the first batches of big.pcap). Only the
 * 'wanted' rows (payload or control flags) are kept: the others are never asked for. */

typedef struct {
    PyObject_HEAD
    Py_ssize_t nflows;
    uint64_t *flow_key;  /* flow id -> flow hash */
    int32_t *slots;      /* open addressing over the flow hashes: flow id + 1, 0 for an empty slot */
    size_t cap;          /* slots: a power of two */
    Py_ssize_t *start;   /* flow f's rows are rows[start[f] .. start[f + 1]) */
    int64_t *rows;       /* the wanted rows, grouped by flow, in frame order within each flow */
} FlowRows;

static void FlowRows_free(FlowRows *self)
{
    free(self->flow_key);
    free(self->slots);
    free(self->start);
    free(self->rows);
    self->flow_key = NULL;
    self->slots = NULL;
    self->start = NULL;
    self->rows = NULL;
    self->nflows = 0;
    self->cap = 0;
}

static void FlowRows_dealloc(FlowRows *self)
{
    FlowRows_free(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The flow id of ``key``, or -1. */
static Py_ssize_t flowrows_find(const FlowRows *self, uint64_t key)
{
    if (!self->cap)
        return -1;
    size_t i = slot_of(key, self->cap);
    for (;;) {
        int32_t f = self->slots[i];
        if (f == 0)
            return -1;
        if (self->flow_key[f - 1] == key)
            return f - 1;
        i = (i + 1) & (self->cap - 1);
    }
}

static void flowrows_place(FlowRows *self, uint64_t key, int32_t f)
{
    size_t i = slot_of(key, self->cap);
    while (self->slots[i])
        i = (i + 1) & (self->cap - 1);
    self->slots[i] = f + 1;
}

static int FlowRows_init(FlowRows *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tcp_rows", "tcp_hash", "tcp_wanted", NULL};
    PyObject *o_rows, *o_hash, *o_wanted;
    Py_buffer vrows, vhash, vwanted;
    int32_t *fid = NULL;
    Py_ssize_t *count = NULL, *pos = NULL;
    int ok = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &o_rows, &o_hash, &o_wanted))
        return -1;
    FlowRows_free(self);
    if (PyObject_GetBuffer(o_rows, &vrows, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    const Py_ssize_t n = vrows.len / 8;
    if (get_in(o_hash, &vhash, n * 8, "tcp_hash") < 0) {
        PyBuffer_Release(&vrows);
        return -1;
    }
    if (get_in(o_wanted, &vwanted, n, "tcp_wanted") < 0) {
        PyBuffer_Release(&vrows);
        PyBuffer_Release(&vhash);
        return -1;
    }
    const int64_t *rows = (const int64_t *)vrows.buf;
    const uint64_t *hashes = (const uint64_t *)vhash.buf;
    const uint8_t *wanted = (const uint8_t *)vwanted.buf;
    size_t room = 64; /* flow ids allocated */
    fid = malloc((n ? n : 1) * sizeof(int32_t));
    self->flow_key = malloc(room * sizeof(uint64_t));
    count = calloc(room, sizeof(Py_ssize_t));
    self->cap = 256;
    self->slots = calloc(self->cap, sizeof(int32_t));
    if (!fid || !self->flow_key || !count || !self->slots)
        goto nomem;
    /* 1: a flow id per wanted row, and the rows per flow */
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!wanted[k]) {
            fid[k] = -1;
            continue;
        }
        Py_ssize_t f = flowrows_find(self, hashes[k]);
        if (f < 0) {
            if ((size_t)self->nflows == room) {
                room *= 2;
                uint64_t *keys = realloc(self->flow_key, room * sizeof(uint64_t));
                if (!keys)
                    goto nomem;
                self->flow_key = keys;
                Py_ssize_t *c = realloc(count, room * sizeof(Py_ssize_t));
                if (!c)
                    goto nomem;
                count = c;
                memset(count + self->nflows, 0, (room - self->nflows) * sizeof(Py_ssize_t));
            }
            if ((size_t)(self->nflows + 1) * 2 > self->cap) { /* load factor <= 1/2 */
                size_t cap = self->cap * 2;
                int32_t *slots = calloc(cap, sizeof(int32_t));
                if (!slots)
                    goto nomem;
                free(self->slots);
                self->slots = slots;
                self->cap = cap;
                for (Py_ssize_t g = 0; g < self->nflows; g++)
                    flowrows_place(self, self->flow_key[g], (int32_t)g);
            }
            f = self->nflows++;
            self->flow_key[f] = hashes[k];
            flowrows_place(self, hashes[k], (int32_t)f);
        }
        fid[k] = (int32_t)f;
        count[f]++;
    }
    /* 2: the rows grouped by flow (a counting sort: frame order kept within a flow) */
    self->start = malloc((self->nflows + 1) * sizeof(Py_ssize_t));
    pos = malloc((self->nflows ? self->nflows : 1) * sizeof(Py_ssize_t));
    if (!self->start || !pos)
        goto nomem;
    Py_ssize_t total = 0;
    for (Py_ssize_t f = 0; f < self->nflows; f++) {
        self->start[f] = pos[f] = total;
        total += count[f];
    }
    self->start[self->nflows] = total;
    self->rows = malloc((total ? total : 1) * sizeof(int64_t));
    if (!self->rows)
        goto nomem;
    for (Py_ssize_t k = 0; k < n; k++)
        if (fid[k] >= 0)
            self->rows[pos[fid[k]]++] = rows[k];
    ok = 0;
    goto done;
nomem:
    PyErr_NoMemory();
    FlowRows_free(self);
done:
    free(fid);
    free(count);
    free(pos);
    PyBuffer_Release(&vrows);
    PyBuffer_Release(&vhash);
    PyBuffer_Release(&vwanted);
    return ok;
}

static PyObject *FlowRows_later(FlowRows *self, PyObject *args)
{
    PyObject *o_hashes;
    long long after;
    if (!PyArg_ParseTuple(args, "OL", &o_hashes, &after))
        return NULL;
    PyObject *seq = PySequence_Fast(o_hashes, "later: hashes must be a sequence of flow hashes");
    if (!seq)
        return NULL;
    PyObject *out = PyList_New(0);
    if (!out) {
        Py_DECREF(seq);
        return NULL;
    }
    int flows_found = 0;
    const Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t j = 0; j < nh; j++) {
        uint64_t key = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, j));
        if (key == (uint64_t)-1 && PyErr_Occurred())
            goto fail;
        Py_ssize_t f = flowrows_find(self, key);
        if (f < 0)
            continue;
        Py_ssize_t lo = self->start[f], hi = self->start[f + 1];
        while (lo < hi) { /* the first row after ``after`` */
            Py_ssize_t mid = lo + (hi - lo) / 2;
            if (self->rows[mid] <= after)
                lo = mid + 1;
            else
                hi = mid;
        }
        hi = self->start[f + 1];
        if (lo < hi)
            flows_found++;
        for (; lo < hi; lo++) {
            PyObject *row = PyLong_FromLongLong(self->rows[lo]);
            if (!row || PyList_Append(out, row) < 0) {
                Py_XDECREF(row);
                goto fail;
            }
            Py_DECREF(row);
        }
    }
    Py_DECREF(seq);
    if (flows_found > 1 && PyList_Sort(out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
fail:
    Py_DECREF(seq);
    Py_DECREF(out);
    return NULL;
}

static PyObject *FlowRows_flows(FlowRows *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(self->nflows);
}

static PyMethodDef FlowRows_methods[] = {
    {"later", (PyCFunction)FlowRows_later, METH_VARARGS,
     "later(hashes, row) -> list of the rows after ``row`` of the flows ``hashes`` (a sequence of ints) that are\n"
     "wanted (payload or control flags), in frame order"},
    {"flows", (PyCFunction)FlowRows_flows, METH_NOARGS, "flows() -> the number of distinct flows with wanted rows"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FlowRowsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "analyzer.dissect._prefilter.FlowRows",
    .tp_doc = PyDoc_STR("FlowRows(tcp_rows, tcp_hash, tcp_wanted): a batch's wanted TCP rows (int64) grouped by\n"
                        "their flow hash (uint64; wanted: uint8), as classify() wrote them"),
    .tp_basicsize = sizeof(FlowRows),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FlowRows_init,
    .tp_dealloc = (destructor)FlowRows_dealloc,
    .tp_methods = FlowRows_methods,
};

static PyMethodDef methods[] = {
    {"classify", classify, METH_VARARGS, classify_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_prefilter",
    "The transport pre-filter in C (see analyzer/dissect/_prefilter.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__prefilter(void)
{
    if (PyType_Ready(&FlowStateType) < 0 || PyType_Ready(&FlowRowsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&FlowStateType);
    if (PyModule_AddObject(m, "FlowState", (PyObject *)&FlowStateType) < 0) {
        Py_DECREF(&FlowStateType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FlowRowsType);
    if (PyModule_AddObject(m, "FlowRows", (PyObject *)&FlowRowsType) < 0) {
        Py_DECREF(&FlowRowsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
