package opamp

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/internal/describe"
)

const fullFlag = uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState)

// paceFullStates sets the full-state asks' pace for the servers the test
// creates.
func paceFullStates(t *testing.T, quiet, maxWait time.Duration) {
	t.Helper()
	oq, ow := fullStateQuiet, fullStateMaxWait
	fullStateQuiet, fullStateMaxWait = quiet, maxWait
	t.Cleanup(func() { fullStateQuiet, fullStateMaxWait = oq, ow })
}

// askedFullState reads the next message after an agent's empty first
// message on a new WebSocket, which is not answered: the ask for its full
// state, with the server's capabilities. It returns when the ask arrived.
func askedFullState(t *testing.T, c *websocket.Conn) time.Time {
	t.Helper()
	ask := readMsg(t, c)
	at := time.Now()
	if ask.Flags&fullFlag == 0 || !bytes.Equal(ask.InstanceUid, uid) || ask.Capabilities != serverCaps {
		t.Fatalf("first message to the agent: %v; want ReportFullState to it, with the server's capabilities", ask)
	}
	return at
}

// TestFullStateAskedWhenHandshakesPause: an agent back on a restarted
// fleet gets no answer to its empty first message; the ask for its full
// state follows on its own once no handshake began for a while (not while other agents keep connecting), or once the agent
// waited the longest wait, handshakes or not. The full state it then
// sends is stored.
func TestFullStateAskedWhenHandshakesPause(t *testing.T) {
	const quiet = 250 * time.Millisecond
	for _, tc := range []struct {
		name    string
		maxWait time.Duration
		// during: the ask must come while the handshakes go on
		during bool
	}{
		{"after the handshakes", time.Minute, false},
		{"longest wait", 400 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paceFullStates(t, quiet, tc.maxWait)
			f := newFixture(t, Options{})
			cred, _ := crashed(t, f, "storm")
			_, reg, url := restartedWith(t, f, Options{})
			c := dialTo(t, url, cred)

			// Other agents keep connecting for 1.5 s (refused: a bad
			// token is a handshake all the same).
			u := "ws" + strings.TrimPrefix(url, "http") + Path
			type storm struct {
				end    time.Time
				maxGap time.Duration
			}
			stormDone := make(chan storm, 1)
			go func() {
				var s storm
				start := time.Now()
				prev := start
				for time.Since(start) < 1500*time.Millisecond {
					now := time.Now()
					s.maxGap = max(s.maxGap, now.Sub(prev))
					prev = now
					if ws, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer not-a-token"}}); err == nil {
						ws.Close()
					}
					time.Sleep(5 * time.Millisecond)
				}
				s.end = time.Now()
				stormDone <- s
			}()
			time.Sleep(50 * time.Millisecond) // the storm is on
			sendMsg(t, c, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 7})
			at := askedFullState(t, c)
			s := <-stormDone
			switch {
			case tc.during && at.After(s.end):
				t.Errorf("asked %v after the handshakes ended; want within the longest wait, %v, while they went on", at.Sub(s.end), tc.maxWait)
			case !tc.during && at.Before(s.end) && s.maxGap < quiet-50*time.Millisecond:
				t.Errorf("asked %v before the handshakes ended, which never paused more than %v; want the ask after a pause of %v", s.end.Sub(at), s.maxGap, quiet)
			}
			waitFor(t, "the deferred ask counted", func() bool {
				return counterVec(t, reg, "fleetprof_opamp_full_state_requests_total", "deferred") == 1
			})

			full := enrollMsg("storm, full state")
			full.SequenceNum = 8
			sendMsg(t, c, full)
			waitFor(t, "the full state stored", func() bool {
				ag, err := f.st.AgentByID(t.Context(), uidHex)
				return err == nil && ag.Hostname == "storm, full state" && ag.Connected
			})
		})
	}
}

// TestFullStateAskSkipsReplacedConnection: an agent whose connection was
// replaced (or closed) before its ask went out is not asked on the old
// one; the new connection's first message is answered as its own.
func TestFullStateAskSkipsReplacedConnection(t *testing.T) {
	paceFullStates(t, 300*time.Millisecond, time.Minute)
	f := newFixture(t, Options{})
	cred, _ := crashed(t, f, "twice")
	srv, reg, url := restartedWith(t, f, Options{})
	old := dialTo(t, url, cred)
	sendMsg(t, old, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 7})
	waitFor(t, "the old connection queued", func() bool {
		srv.fullStates.mu.Lock()
		defer srv.fullStates.mu.Unlock()
		return len(srv.fullStates.queued) == 1
	})
	c := dialTo(t, url, cred)
	sendMsg(t, c, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 9})
	askedFullState(t, c)
	// The old connection was closed when the new one took over, and
	// never asked.
	_ = old.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, b, err := old.ReadMessage(); err == nil {
		t.Fatalf("the replaced connection got a message (%d bytes); want it closed", len(b))
	}
	// Both were queued and taken in order, the old one first.
	waitFor(t, "the new connection's ask counted", func() bool {
		return counterVec(t, reg, "fleetprof_opamp_full_state_requests_total", "deferred") == 1
	})
	srv.fullStates.mu.Lock()
	left := len(srv.fullStates.queued)
	srv.fullStates.mu.Unlock()
	if n := counterVec(t, reg, "fleetprof_opamp_full_state_requests_total", "deferred"); n != 1 || left != 0 {
		t.Errorf("deferred full-state asks counted: %v, %d queued; want 1 (the new connection's only), none", n, left)
	}
}

// TestFullStateAsksWaitForFullStates: with room for one awaited full
// state, the second agent is asked only once the first one's full state
// came.
func TestFullStateAsksWaitForFullStates(t *testing.T) {
	paceFullStates(t, 10*time.Millisecond, time.Minute)
	old := fullStateInFlight
	fullStateInFlight = 1
	t.Cleanup(func() { fullStateInFlight = old })
	f := newFixture(t, Options{})
	uids := [][]byte{uid, []byte("fedcba9876543210")}
	full := func(u []byte, seq uint64) *protobufs.AgentToServer {
		return &protobufs.AgentToServer{InstanceUid: u, SequenceNum: seq, AgentDescription: describe.Encode(describe.Agent{Platform: "systemd", Hostname: hex.EncodeToString(u)})}
	}
	var creds []string
	for _, u := range uids {
		c := dialWS(t, f, f.boot)
		sendMsg(t, c, full(u, 0))
		creds = append(creds, strings.TrimPrefix(readMsg(t, c).GetConnectionSettings().GetOpamp().GetHeaders().GetHeaders()[0].GetValue(), "Bearer "))
		c.Close()
		a := dialWS(t, f, creds[len(creds)-1])
		sendMsg(t, a, full(u, 1))
		readMsg(t, a)
		waitFor(t, "the credential recorded", func() bool {
			ag, err := f.st.AgentByID(t.Context(), hex.EncodeToString(u))
			return err == nil && ag.CredentialHash != "" && ag.Connected && ag.PendingCredentialID == ""
		})
	}
	_, _, url := restartedWith(t, f, Options{})
	type got struct {
		i   int
		msg *protobufs.ServerToAgent
	}
	asks := make(chan got, 2)
	var conns []*websocket.Conn
	for i, u := range uids {
		c := dialTo(t, url, creds[i])
		conns = append(conns, c)
		sendMsg(t, c, &protobufs.AgentToServer{InstanceUid: u, SequenceNum: 7})
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, b, err := c.ReadMessage(); err == nil {
				m := &protobufs.ServerToAgent{}
				if decodeMessage(b, m) == nil {
					asks <- got{i, m}
				}
			}
		}()
	}
	first := <-asks
	if first.msg.Flags&fullFlag == 0 {
		t.Fatalf("first message %v: want the ask", first.msg)
	}
	select {
	case g := <-asks:
		t.Fatalf("agent %d asked while agent %d's full state was awaited", g.i, first.i)
	case <-time.After(300 * time.Millisecond):
	}
	sendMsg(t, conns[first.i], full(uids[first.i], 8))
	select {
	case g := <-asks:
		if g.i == first.i || g.msg.Flags&fullFlag == 0 {
			t.Fatalf("after the first full state: agent %d got %v; want the other agent asked", g.i, g.msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second agent was never asked")
	}
}
