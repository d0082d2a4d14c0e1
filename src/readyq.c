/* readyq.c - growth of the ready ring buffer.  See readyq.h. */
#include "readyq.h"

#include <stdlib.h>
#include <string.h>

int
gh_readyq_grow(gh_readyq *q)
{
    size_t ncap = q->cap ? q->cap * 2 : 64;
    if (ncap < q->cap || ncap > ((size_t)-1) / sizeof(void *)) {
        return -1;
    }
    void **items = malloc(ncap * sizeof(void *));
    if (items == NULL) {
        return -1;
    }
    /* Unwrap the ring into the new buffer, oldest first. */
    size_t first = q->cap - q->head;
    if (first > q->len) {
        first = q->len;
    }
    if (q->len) {
        memcpy(items, q->items + q->head, first * sizeof(void *));
        memcpy(items + first, q->items, (q->len - first) * sizeof(void *));
    }
    free(q->items);
    q->items = items;
    q->head = 0;
    q->cap = ncap;
    return 0;
}

void
gh_readyq_free(gh_readyq *q)
{
    free(q->items);
    q->items = NULL;
    q->head = q->len = q->cap = 0;
}
