package opamp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/protobufs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// TestReconnectWithRecordedCredential: the first connection with an
// agent's credential is verified by signature and records the
// credential's SHA-256 in the agent's record; a reconnect with the same
// credential is accepted on that record (no signature check), also by a
// restarted server once it loaded the recorded credentials. A token that
// is not the recorded one is verified in full, and a revoked credential
// is refused though its sum is recorded.
func TestReconnectWithRecordedCredential(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, Options{Registerer: reg})
	checks := func(how string) float64 {
		return counterVec(t, reg, "fleetprof_opamp_credential_checks_total", how)
	}
	cred := enrolled(t, f, "recorded")

	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg("recorded"))
	readMsg(t, a)
	sum := sha256.Sum256([]byte(cred))
	want := hex.EncodeToString(sum[:])
	waitFor(t, "the credential's sum recorded", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && ag.CredentialHash == want
	})
	if got := checks("signature"); got != 2 { // the bootstrap token, then the credential
		t.Errorf("%v connections verified by signature, want 2", got)
	}
	a.Close()
	waitFor(t, "disconnect", func() bool { return len(f.srv.Connected()) == 0 })

	b := dialWS(t, f, cred)
	if got := checks("recorded"); got != 1 {
		t.Fatalf("reconnect with the recorded credential: %v checked on the record, want 1", got)
	}
	sendMsg(t, b, enrollMsg("recorded again"))
	readMsg(t, b)
	waitFor(t, "report stored", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && ag.Hostname == "recorded again"
	})
	b.Close()
	waitFor(t, "disconnect", func() bool { return len(f.srv.Connected()) == 0 })

	// A restarted server knows the credential once it loaded the records.
	reg2, c2 := restarted(t, f, cred)
	c2.Close()
	if got := counterVec(t, reg2, "fleetprof_opamp_credential_checks_total", "recorded"); got != 1 {
		t.Errorf("restarted server: %v connections checked on the record, want 1", got)
	}

	// Same claims, another signature: not the recorded token, refused.
	parts := strings.Split(cred, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
	if code := dialCode(t, f, forged); code != http.StatusUnauthorized {
		t.Errorf("forged credential: HTTP %d, want 401", code)
	}

	// Revoked: refused though its sum is recorded.
	ag, err := f.st.AgentByID(t.Context(), uidHex)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.auth.Revoke(t.Context(), ag.CredentialID); err != nil {
		t.Fatal(err)
	}
	if code := dialCode(t, f, cred); code != http.StatusUnauthorized {
		t.Errorf("revoked recorded credential: HTTP %d, want 401", code)
	}
}

// dialCode dials a WebSocket with tok and returns the HTTP status of a
// refused handshake (101 when accepted).
func dialCode(t *testing.T, f *fixture, tok string) int {
	t.Helper()
	u := "ws" + strings.TrimPrefix(f.http.URL, "http") + Path
	c, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + tok}})
	if err == nil {
		c.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode
}

// TestFirstReportStartsFromPreloadedRecord: after a restart, an agent's
// first status report starts from the record LoadRecorded listed (no
// store read); a record written by someone else after the listing is not
// lost: its row version makes the report's write conflict, and the
// report is applied to a fresh read.
func TestFirstReportStartsFromPreloadedRecord(t *testing.T) {
	f := newFixture(t, Options{})
	cred := enrolled(t, f, "preloaded")
	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg("preloaded"))
	readMsg(t, a)
	waitFor(t, "the credential's sum recorded", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && ag.CredentialHash != ""
	})
	a.Close()
	// The close writes "disconnected" after the connection is gone:
	// wait for the write, or the restart would list the record before it.
	waitFor(t, "disconnect stored", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && !ag.Connected
	})

	source := func(reg *prometheus.Registry, s string) float64 {
		return counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", s)
	}

	// As opamp-go does on a new WebSocket: the sequence goes on, the
	// first message says nothing; asked for its full state, it sends it.
	before, err := f.st.AgentByID(t.Context(), uidHex)
	if err != nil {
		t.Fatal(err)
	}
	reg, c := restarted(t, f, cred)
	sendMsg(t, c, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 7})
	askedFullState(t, c)
	full := enrollMsg("first report")
	full.SequenceNum = 8
	sendMsg(t, c, full) // (a bare acknowledgement, not sent on a WebSocket)
	waitFor(t, "first report stored", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && ag.Hostname == "first report" && ag.Connected
	})
	if ag, _ := f.st.AgentByID(t.Context(), uidHex); ag.RowVersion != before.RowVersion+1 {
		t.Errorf("the empty first message and the full state: record at version %d, was %d; want one write", ag.RowVersion, before.RowVersion)
	}
	if p, r := source(reg, "preloaded"), source(reg, "read"); p != 1 || r != 0 {
		t.Errorf("first report after a restart: %v from the preloaded record, %v read; want 1, 0", p, r)
	}
	c.Close()
	waitFor(t, "disconnect", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && !ag.Connected
	})

	// Written after the listing: the preloaded record is stale.
	reg, c = restarted(t, f, cred)
	ag, err := f.st.AgentByID(t.Context(), uidHex)
	if err != nil {
		t.Fatal(err)
	}
	ag.CustomLabels = map[string]string{"team": "after the listing"}
	if err := f.st.UpsertAgent(t.Context(), ag); err != nil {
		t.Fatal(err)
	}
	sendMsg(t, c, enrollMsg("second report"))
	readMsg(t, c)
	waitFor(t, "second report stored", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && ag.Hostname == "second report"
	})
	ag, err = f.st.AgentByID(t.Context(), uidHex)
	if err != nil || ag.CustomLabels["team"] != "after the listing" || !ag.Connected {
		t.Fatalf("record after a stale preloaded start: %+v, %v; want the label written after the listing kept, connected", ag, err)
	}
	if p, r := source(reg, "preloaded"), source(reg, "read"); p != 1 || r != 1 {
		t.Errorf("report on a stale preloaded record: %v preloaded, %v read; want 1, 1 (the conflict's retry)", p, r)
	}
}

// restarted starts another server on f's store, as a restart does (it
// loads the recorded credentials before serving), and dials it with tok.
func restarted(t *testing.T, f *fixture, tok string) (*prometheus.Registry, *websocket.Conn) {
	t.Helper()
	_, reg, url := restartedWith(t, f, Options{})
	return reg, dialTo(t, url, tok)
}

// restartedWith starts the restarted server with o (its store, auth and
// registerer set here) and returns it, its metrics and its URL.
func restartedWith(t *testing.T, f *fixture, o Options) (*Server, *prometheus.Registry, string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Store, o.Auth, o.Registerer = f.st, f.auth, reg
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.LoadRecorded(t.Context()); err != nil {
		t.Fatal(err)
	}
	return srv, reg, serve(t, srv).URL
}

// crashed leaves an agent enrolled and connected to f's server with
// hostname host, as a fleet's crash leaves it: its record says connected
// (nothing wrote otherwise). It returns the agent's credential and the
// record.
func crashed(t *testing.T, f *fixture, host string) (string, *store.Agent) {
	t.Helper()
	cred := enrolled(t, f, host)
	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg(host))
	readMsg(t, a)
	var rec *store.Agent
	waitFor(t, "the record written with the credential", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		rec = ag
		return err == nil && ag.CredentialHash != "" && ag.Connected && ag.PendingCredentialID == ""
	})
	return cred, rec
}

// TestReconnectThatChangesNothingWritesNothing: after a crash, an agent
// back on a restarted fleet whose full state is what its record holds
// costs no store write; on the store's sole writer (SQLite) no read
// either. The rollouts still hear of it (OnAgentStatus, the record), and
// its next report that changes something is written.
func TestReconnectThatChangesNothingWritesNothing(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run(fmt.Sprintf("sole writer %v", sole), func(t *testing.T) {
			f := newFixture(t, Options{})
			cred, before := crashed(t, f, "steady")
			heard := make(chan *store.Agent, 4)
			_, reg, url := restartedWith(t, f, Options{SoleWriter: sole, Callbacks: Callbacks{OnAgentStatus: func(a *store.Agent) { heard <- a }}})
			c := dialTo(t, url, cred)
			sendMsg(t, c, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 7})
			askedFullState(t, c)
			full := enrollMsg("steady")
			full.SequenceNum = 8
			sendMsg(t, c, full)
			select {
			case a := <-heard:
				if a.Hostname != "steady" || !a.Connected || a.RowVersion != before.RowVersion {
					t.Errorf("rollouts heard %+v; want the record at version %d", a, before.RowVersion)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the rollouts never heard of the agent that came back")
			}
			ag, err := f.st.AgentByID(t.Context(), uidHex)
			if err != nil || ag.RowVersion != before.RowVersion || !ag.Connected {
				t.Fatalf("record after a reconnect that changed nothing: %+v, %v; want version %d, connected", ag, err, before.RowVersion)
			}
			wantRead := 1.0
			if sole {
				wantRead = 0
			}
			if p, r := counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "preloaded"), counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "read"); p != 1 || r != wantRead {
				t.Errorf("record reads: %v preloaded, %v read; want 1, %v", p, r, wantRead)
			}

			changed := enrollMsg("renamed")
			changed.SequenceNum = 9
			sendMsg(t, c, changed)
			waitFor(t, "the change stored", func() bool {
				ag, err := f.st.AgentByID(t.Context(), uidHex)
				return err == nil && ag.Hostname == "renamed" && ag.RowVersion == before.RowVersion+1
			})
		})
	}
}

// TestMarkGone: a restarted sole writer marks disconnected the agents
// its store says are connected that did not come back, and only those.
// One that comes back after the mark reads it and writes itself
// connected again.
func TestMarkGone(t *testing.T) {
	f := newFixture(t, Options{})
	cred, _ := crashed(t, f, "gone")
	connected := func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		if err != nil {
			t.Fatal(err)
		}
		return ag.Connected
	}

	// Back before the mark: not marked.
	srv, _, url := restartedWith(t, f, Options{SoleWriter: true})
	c := dialTo(t, url, cred)
	sendMsg(t, c, enrollMsg("gone"))
	waitFor(t, "the agent back", func() bool { return len(srv.Connected()) == 1 })
	n, err := srv.MarkGone(t.Context())
	if err != nil || n != 0 || !connected() {
		t.Fatalf("MarkGone with the agent back: %d marked, %v, connected %v; want 0 marked, still connected", n, err, connected())
	}

	// Not back: marked, and its record listed at the start dropped.
	srv, reg, url := restartedWith(t, f, Options{SoleWriter: true})
	n, err = srv.MarkGone(t.Context())
	if err != nil || n != 1 || connected() {
		t.Fatalf("MarkGone with the agent away: %d marked, %v, connected %v; want 1 marked, disconnected", n, err, connected())
	}
	c = dialTo(t, url, cred)
	sendMsg(t, c, enrollMsg("gone"))
	waitFor(t, "connected again", connected)
	if p, r := counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "preloaded"), counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "read"); p != 0 || r != 1 {
		t.Errorf("first report after the mark: %v preloaded, %v read; want 0, 1", p, r)
	}
}

// listingStore holds ListAgentCredentials until release is closed
// (entered is closed when it is called).
type listingStore struct {
	store.Store
	entered, release chan struct{}
}

func (s listingStore) ListAgentCredentials(ctx context.Context) ([]store.AgentCredential, error) {
	close(s.entered)
	<-s.release
	return s.Store.ListAgentCredentials(ctx)
}

// TestHandshakeWaitsForTheListing: while LoadRecordedWhileServing lists,
// the fleet serves but an agent's handshake waits for the listing, and is
// then checked on the credential it listed (no signature check).
func TestHandshakeWaitsForTheListing(t *testing.T) {
	f := newFixture(t, Options{})
	cred, _ := crashed(t, f, "early")
	ls := listingStore{Store: f.st, entered: make(chan struct{}), release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	srv, err := New(Options{Store: ls, Auth: f.auth, Registerer: reg, SoleWriter: true})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, srv).URL
	listed := make(chan error, 1)
	srv.LoadRecordedWhileServing(t.Context(), func(err error) { listed <- err })
	<-ls.entered

	type dialed struct {
		c    *websocket.Conn
		code int
		err  error
	}
	out := make(chan dialed, 1)
	go func() {
		u := "ws" + strings.TrimPrefix(url, "http") + Path
		c, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + cred}})
		d := dialed{c: c, err: err}
		if resp != nil {
			d.code = resp.StatusCode
		}
		out <- d
	}()
	select {
	case d := <-out:
		t.Fatalf("handshake answered (HTTP %d, %v) while the credentials were being listed", d.code, d.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(ls.release)
	d := <-out
	if d.err != nil {
		t.Fatalf("handshake after the listing: HTTP %d, %v", d.code, d.err)
	}
	t.Cleanup(func() { d.c.Close() })
	if err := <-listed; err != nil {
		t.Fatal(err)
	}
	checks := func(how string) float64 {
		return counterVec(t, reg, "fleetprof_opamp_credential_checks_total", how)
	}
	if r, s := checks("recorded"), checks("signature"); r != 1 || s != 0 {
		t.Errorf("handshake during the listing: %v checked on the record, %v by signature; want 1, 0", r, s)
	}
	sendMsg(t, d.c, enrollMsg("early"))
	waitFor(t, "the agent back", func() bool { return len(srv.Connected()) == 1 })
	if p := counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "preloaded"); p != 1 {
		t.Errorf("first report: %v records from the listing, want 1", p)
	}
}
