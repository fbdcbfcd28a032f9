package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	opampserver "github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"
)

// bare runs the baseline: a bare opamp-go server (no auth, no store) on
// -addr that accepts every agent and answers every message, as the
// issue's reference. Its control endpoints on -ctl: GET /connected (the
// WebSockets held), POST /push (the body as a remote config to every
// connection, sent from one goroutine like a simple fleet would), GET
// /applied (connections that reported APPLIED for the last push). It
// also prints, every 20 ms on stdout, how many connections have sent a
// message: near the file cap it can no longer accept a control
// connection, and the reconnect storm is timed on that count, as the
// fleet's is (fleetprof_opamp_connected_agents counts an agent at its
// first message).
func bare(args []string) error {
	fs := flag.NewFlagSet("bare", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:4320", "OpAMP address")
	ctl := fs.String("ctl", "127.0.0.1:4321", "control address")
	_ = fs.Parse(args)

	var mu sync.Mutex
	conns := map[types.Connection]bool{} // → applied the current config
	heard := map[types.Connection]bool{} // connections that sent a message
	var hash []byte
	go func() {
		last := -1
		for range time.Tick(20 * time.Millisecond) {
			mu.Lock()
			n := len(heard)
			mu.Unlock()
			if n != last {
				fmt.Println(n)
				last = n
			}
		}
	}()
	cb := types.ConnectionCallbacks{
		OnConnected: func(_ context.Context, c types.Connection) {
			mu.Lock()
			conns[c] = false
			mu.Unlock()
		},
		OnMessage: func(_ context.Context, c types.Connection, m *protobufs.AgentToServer) *protobufs.ServerToAgent {
			mu.Lock()
			heard[c] = true
			mu.Unlock()
			if st := m.RemoteConfigStatus; st != nil && st.Status == protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED {
				mu.Lock()
				if hash != nil && bytes.Equal(st.LastRemoteConfigHash, hash) {
					conns[c] = true
				}
				mu.Unlock()
			}
			return &protobufs.ServerToAgent{InstanceUid: m.InstanceUid}
		},
		OnConnectionClose: func(c types.Connection) {
			mu.Lock()
			delete(conns, c)
			delete(heard, c)
			mu.Unlock()
		},
	}
	srv := opampserver.New(nil)
	err := srv.Start(opampserver.StartSettings{ListenEndpoint: *addr, Settings: opampserver.Settings{Callbacks: types.Callbacks{
		OnConnecting: func(*http.Request) types.ConnectionResponse {
			return types.ConnectionResponse{Accept: true, ConnectionCallbacks: cb}
		},
	}}})
	if err != nil {
		return fmt.Errorf("start bare opamp-go server: %w", err)
	}
	mux := http.NewServeMux()
	count := func(applied bool) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, ok := range conns {
			if !applied || ok {
				n++
			}
		}
		return n
	}
	mux.HandleFunc("GET /connected", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, count(false)) })
	mux.HandleFunc("GET /applied", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, count(true)) })
	mux.HandleFunc("POST /push", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(body)
		mu.Lock()
		hash = sum[:]
		list := make([]types.Connection, 0, len(conns))
		for c := range conns {
			conns[c] = false
			list = append(list, c)
		}
		mu.Unlock()
		rc := &protobufs.AgentRemoteConfig{ConfigHash: sum[:], Config: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{"": {Body: body, ContentType: "application/yaml"}}}}
		for _, c := range list {
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			_ = c.Send(ctx, &protobufs.ServerToAgent{RemoteConfig: rc})
			cancel()
		}
		fmt.Fprint(w, len(list))
	})
	return http.ListenAndServe(*ctl, mux)
}
