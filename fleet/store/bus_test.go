package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/store"
)

func TestEncodeDecodeNotification(t *testing.T) {
	uuid := "0190f3c4-7a2b-7c3d-8e4f-a1b2c3d4e5f6"
	many := make([]string, 1000)
	for i := range many {
		many[i] = fmt.Sprintf("%s-%04d", uuid, i)
	}
	for _, tc := range []struct {
		name     string
		n        store.Notification
		payloads int
		err      bool
	}{
		{"one", store.Notification{Topic: "revoke", Origin: "a1", IDs: []string{uuid}}, 1, false},
		{"agent ids", store.Notification{Topic: "rotate", Origin: "host.1_x", IDs: []string{"0123456789abcdef0123456789abcdef", "fedcba"}}, 1, false},
		{"chunked", store.Notification{Topic: "assign", Origin: "b", IDs: many}, 6, false},
		{"no ids", store.Notification{Topic: "assign", Origin: "b"}, 0, true},
		{"bad topic", store.Notification{Topic: "Assign", Origin: "b", IDs: []string{"x"}}, 0, true},
		{"topic with separator", store.Notification{Topic: "a;b", Origin: "b", IDs: []string{"x"}}, 0, true},
		{"bad origin", store.Notification{Topic: "assign", Origin: "b;c", IDs: []string{"x"}}, 0, true},
		{"id with comma", store.Notification{Topic: "assign", Origin: "b", IDs: []string{"x,y"}}, 0, true},
		{"empty id", store.Notification{Topic: "assign", Origin: "b", IDs: []string{""}}, 0, true},
		{"long id", store.Notification{Topic: "assign", Origin: "b", IDs: []string{strings.Repeat("a", store.MaxIDLen+1)}}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := store.EncodeNotification(tc.n)
			if tc.err {
				if !errors.Is(err, store.ErrBadNotification) {
					t.Fatalf("encode: got %v, want ErrBadNotification", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != tc.payloads {
				t.Errorf("%d payloads, want %d", len(ps), tc.payloads)
			}
			got := store.Notification{Topic: tc.n.Topic, Origin: tc.n.Origin}
			for _, p := range ps {
				if len(p) > store.MaxPayload {
					t.Errorf("payload of %d bytes, over %d", len(p), store.MaxPayload)
				}
				n, err := store.DecodeNotification(p)
				if err != nil {
					t.Fatalf("decode %.60q: %v", p, err)
				}
				if n.Topic != tc.n.Topic || n.Origin != tc.n.Origin {
					t.Errorf("decoded %s/%s, want %s/%s", n.Topic, n.Origin, tc.n.Topic, tc.n.Origin)
				}
				got.IDs = append(got.IDs, n.IDs...)
			}
			if diff := cmp.Diff(tc.n, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeNotificationRejects(t *testing.T) {
	for _, p := range []string{
		"",
		"1",
		"1;revoke;a",
		"1;revoke;a;",
		"2;revoke;a;x",
		"1;revoke;a;x,,y",
		"1;revoke;a;x,",
		"1;REVOKE;a;x",
		"1;;a;x",
		"1;revoke;;x",
		"1;revoke;a;x;y",
		"1;revoke;a;x y",
		"1;revoke;a;\x00",
		"1;revoke;a;é",
		"1;revoke;a;" + strings.Repeat("b", store.MaxPayload),
	} {
		if n, err := store.DecodeNotification(p); !errors.Is(err, store.ErrBadNotification) {
			t.Errorf("decode %.40q: got %+v, %v; want ErrBadNotification", p, n, err)
		}
	}
}

// FuzzDecodeNotification: the decoder never panics, and whatever it
// accepts encodes back to the same single payload.
func FuzzDecodeNotification(f *testing.F) {
	for _, s := range []string{"1;revoke;a1b2;0190f3c4-7a2b-7c3d-8e4f-a1b2c3d4e5f6", "1;assign;x;a,b,c", "1;rotate;o;", "garbage"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n, err := store.DecodeNotification(p)
		if err != nil {
			if !errors.Is(err, store.ErrBadNotification) {
				t.Fatalf("error %v does not wrap ErrBadNotification", err)
			}
			return
		}
		ps, err := store.EncodeNotification(n)
		if err != nil {
			t.Fatalf("accepted %q but cannot encode it: %v", p, err)
		}
		if len(ps) != 1 || ps[0] != p {
			t.Fatalf("accepted %q, encodes as %q", p, ps)
		}
	})
}

func recv(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return store.Event{}
}

func TestLocalBus(t *testing.T) {
	var b store.LocalBus
	ch := b.Subscribe(t.Context(), store.TopicRevoke)
	other := b.Subscribe(t.Context(), store.TopicAssign)
	if err := b.Publish(t.Context(), store.TopicRevoke, "a", "b", "a"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(store.Event{IDs: []string{"a", "b"}}, recv(t, ch)); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	select {
	case ev := <-other:
		t.Errorf("subscriber of another topic got %+v", ev)
	case <-time.After(50 * time.Millisecond):
	}
	if err := b.Publish(t.Context(), store.TopicRevoke, "ok", "not ok"); !errors.Is(err, store.ErrBadNotification) {
		t.Errorf("publish of a bad id: got %v, want ErrBadNotification", err)
	}
	if !b.Live() {
		t.Error("a local bus is not live")
	}
}

// TestHubSlowReader: a reader that does not keep up gets the pending ids
// merged into one event, and past MaxPending a Resync instead of an
// unbounded queue.
func TestHubSlowReader(t *testing.T) {
	var h store.Hub
	ch := h.Subscribe(t.Context(), "t")
	// The reader is not reading: everything queues in the subscription.
	for i := range 3 {
		h.Deliver("t", []string{fmt.Sprint("id", i)})
	}
	time.Sleep(50 * time.Millisecond)
	ev := recv(t, ch)
	all := ev.IDs
	for len(all) < 3 {
		all = append(all, recv(t, ch).IDs...)
	}
	if diff := cmp.Diff([]string{"id0", "id1", "id2"}, all); diff != "" {
		t.Errorf("ids (-want +got):\n%s", diff)
	}

	// Fill past the bound while the reader is away.
	ids := make([]string, store.MaxPending+10)
	for i := range ids {
		ids[i] = fmt.Sprint("x", i)
	}
	h.Deliver("t", ids)
	var resync bool
	n := 0
	deadline := time.After(5 * time.Second)
	for !resync {
		select {
		case ev := <-ch:
			resync = resync || ev.Resync
			n += len(ev.IDs)
		case <-deadline:
			t.Fatal("no Resync after overflowing the subscription")
		}
	}
	if n > store.MaxPending {
		t.Errorf("%d ids delivered, more than MaxPending %d", n, store.MaxPending)
	}

	h.ResyncAll()
	if ev := recv(t, ch); !ev.Resync {
		t.Errorf("after ResyncAll: %+v, want Resync", ev)
	}
}

func TestHubUnsubscribe(t *testing.T) {
	var h store.Hub
	ctx, cancel := context.WithCancel(t.Context())
	ch := h.Subscribe(ctx, "t")
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("event after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after its context ended")
	}
	h.Deliver("t", []string{"a"}) // no subscriber left: must not block
}
