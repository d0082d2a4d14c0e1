/* timerq.c - the timer min-heap.  See timerq.h. */
#include "timerq.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>

static inline int
earlier(const gh_timer_entry *a, const gh_timer_entry *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void
sift_up(gh_timer_entry *h, size_t i)
{
    gh_timer_entry e = h[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(&e, &h[parent])) {
            break;
        }
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static void
sift_down(gh_timer_entry *h, size_t len, size_t i)
{
    gh_timer_entry e = h[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= len) {
            break;
        }
        if (child + 1 < len && earlier(&h[child + 1], &h[child])) {
            child++;
        }
        if (!earlier(&h[child], &e)) {
            break;
        }
        h[i] = h[child];
        i = child;
    }
    h[i] = e;
}

int
gh_timerq_push(gh_timerq *q, double when, void *data)
{
    if (q->len == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 64;
        if (ncap > ((size_t)-1) / sizeof(gh_timer_entry)) {
            return -1;
        }
        gh_timer_entry *items = realloc(q->items, ncap * sizeof(*items));
        if (items == NULL) {
            return -1;
        }
        q->items = items;
        q->cap = ncap;
    }
    /* The key must not be NaN, or the order is no longer total (timerq.h). */
    q->items[q->len].when = isnan(when) ? -INFINITY : when;
    q->items[q->len].seq = q->next_seq++;
    q->items[q->len].data = data;
    sift_up(q->items, q->len);
    q->len++;
    return 0;
}

void *
gh_timerq_pop(gh_timerq *q)
{
    assert(q->len > 0);
    void *data = q->items[0].data;
    q->len--;
    if (q->len) {
        q->items[0] = q->items[q->len];
        sift_down(q->items, q->len, 0);
    }
    return data;
}

void
gh_timerq_filter(gh_timerq *q, int (*keep)(void *, void *), void (*drop)(void *, void *), void *arg)
{
    size_t n = 0;
    for (size_t i = 0; i < q->len; i++) {
        if (keep(q->items[i].data, arg)) {
            q->items[n++] = q->items[i];
        }
        else {
            drop(q->items[i].data, arg);
        }
    }
    q->len = n;
    /* Floyd's heapify; sequence numbers keep the FIFO tie-break. */
    for (size_t i = n / 2; i-- > 0;) {
        sift_down(q->items, n, i);
    }
}

void
gh_timerq_free(gh_timerq *q)
{
    free(q->items);
    q->items = NULL;
    q->len = q->cap = 0;
}
