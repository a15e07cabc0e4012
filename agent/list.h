/* Intrusive doubly linked lists, in the manner of libuv's queue.h and the kernel's list.h. */
#ifndef BOXD_LIST_H
#define BOXD_LIST_H

#include <stddef.h>

struct list {
    struct list *prev, *next;
};

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void list_init(struct list *h)
{
    h->prev = h->next = h;
}

static inline int list_empty(const struct list *h)
{
    return h->next == h;
}

/* Linked means "on some list"; an unlinked node points to itself (list_init or list_del). */
static inline int list_linked(const struct list *n)
{
    return n->next != n;
}

static inline void list_add_tail(struct list *h, struct list *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static inline void list_del(struct list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define list_for_each_safe(pos, tmp, head)                                                     \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); (pos) = (tmp), (tmp) = (pos)->next)

#endif
