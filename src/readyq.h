/*
 * readyq.h - the ready queue: a FIFO ring buffer of opaque pointers.
 *
 * No PyObject here; the loop layer stores handles in it and owns one
 * reference per queued item.  Capacity is a power of two so that indexes
 * wrap with a mask.  Not thread-safe by itself: every access happens with
 * the GIL held (see sched.c, "Threads").
 */
#ifndef GH_READYQ_H
#define GH_READYQ_H

#include <assert.h>
#include <stddef.h>

typedef struct {
    void **items; /* ring storage, `cap` slots; NULL while empty and unused */
    size_t head;  /* index of the oldest item */
    size_t len;
    size_t cap; /* 0 or a power of two */
} gh_readyq;

/* Grows the ring; returns -1 on out-of-memory (the queue is unchanged). */
int gh_readyq_grow(gh_readyq *q);
void gh_readyq_free(gh_readyq *q);

static inline int
gh_readyq_push(gh_readyq *q, void *item)
{
    if (q->len == q->cap && gh_readyq_grow(q) < 0) {
        return -1;
    }
    q->items[(q->head + q->len) & (q->cap - 1)] = item;
    q->len++;
    return 0;
}

/* Caller checks q->len > 0 first. */
static inline void *
gh_readyq_pop(gh_readyq *q)
{
    assert(q->len > 0);
    void *item = q->items[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    return item;
}

/* The i-th oldest item, 0 <= i < len. */
static inline void *
gh_readyq_at(const gh_readyq *q, size_t i)
{
    assert(i < q->len);
    return q->items[(q->head + i) & (q->cap - 1)];
}

#endif /* GH_READYQ_H */
