/*
 * timerq.h - the timer queue: a binary min-heap of (deadline, sequence,
 * opaque pointer).
 *
 * Ties on the deadline are broken by insertion order, so timers due at the
 * same time run first-scheduled-first.  No PyObject here; the loop layer
 * owns one reference per entry and does lazy cancellation: a cancelled
 * entry stays until it reaches the top or until gh_timerq_filter() sweeps.
 *
 * The heap never holds a NaN: gh_timerq_push() files a NaN deadline as
 * -inf.  Every comparison with a NaN is false, so one NaN key would make
 * "earlier" non-transitive and could leave later timers above earlier ones
 * anywhere in the heap (asyncio's heapq has that problem); with -inf the
 * order is total, and a NaN timer is due at once, first among the timers
 * in the past, in scheduling order.  +inf and -inf are ordinary keys.
 */
#ifndef GH_TIMERQ_H
#define GH_TIMERQ_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    double when;
    uint64_t seq;
    void *data;
} gh_timer_entry;

typedef struct {
    gh_timer_entry *items; /* heap array, `cap` slots */
    size_t len;
    size_t cap;
    uint64_t next_seq;
} gh_timerq;

/* Returns -1 on out-of-memory (the heap is unchanged).  A NaN `when` is
 * stored as -inf (see above). */
int gh_timerq_push(gh_timerq *q, double when, void *data);
/* Removes and returns the earliest entry's data; caller checks len > 0. */
void *gh_timerq_pop(gh_timerq *q);
/* Keeps the entries for which keep(data, arg) is non-zero and passes every
 * other one to drop(data, arg); then restores the heap order. */
void gh_timerq_filter(gh_timerq *q, int (*keep)(void *data, void *arg),
                      void (*drop)(void *data, void *arg), void *arg);
void gh_timerq_free(gh_timerq *q);

static inline const gh_timer_entry *
gh_timerq_top(const gh_timerq *q)
{
    return q->len ? &q->items[0] : NULL;
}

#endif /* GH_TIMERQ_H */
