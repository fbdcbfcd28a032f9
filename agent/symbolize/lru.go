package symbolize

import "container/list"

// lru is a map bounded by entry count that evicts the least recently used
// entry. Not safe for concurrent use.
type lru[K comparable, V any] struct {
	max     int
	ll      *list.List
	items   map[K]*list.Element
	onEvict func(K, V)
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](max int, onEvict func(K, V)) *lru[K, V] {
	return &lru[K, V]{max: max, ll: list.New(), items: map[K]*list.Element{}, onEvict: onEvict}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	if e, ok := c.items[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruEntry[K, V]).val, true
	}
	var zero V
	return zero, false
}

func (c *lru[K, V]) put(k K, v V) {
	if e, ok := c.items[k]; ok {
		e.Value.(*lruEntry[K, V]).val = v
		c.ll.MoveToFront(e)
		return
	}
	c.items[k] = c.ll.PushFront(&lruEntry[K, V]{k, v})
	for c.ll.Len() > c.max {
		c.removeElement(c.ll.Back())
	}
}

func (c *lru[K, V]) remove(k K) {
	if e, ok := c.items[k]; ok {
		c.removeElement(e)
	}
}

func (c *lru[K, V]) removeElement(e *list.Element) {
	ent := e.Value.(*lruEntry[K, V])
	c.ll.Remove(e)
	delete(c.items, ent.key)
	if c.onEvict != nil {
		c.onEvict(ent.key, ent.val)
	}
}

func (c *lru[K, V]) len() int { return c.ll.Len() }

// each calls fn for every entry, most recent first, without reordering.
func (c *lru[K, V]) each(fn func(K, V)) {
	for e := c.ll.Front(); e != nil; e = e.Next() {
		ent := e.Value.(*lruEntry[K, V])
		fn(ent.key, ent.val)
	}
}

func (c *lru[K, V]) clear() {
	for c.ll.Len() > 0 {
		c.removeElement(c.ll.Back())
	}
}
