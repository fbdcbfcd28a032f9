package opamp

import (
	"net/http"
)

// closePlain closes plain-HTTP connections after their answer: an
// agent's plain-HTTP requests are rare (credential probes, admission
// checks, HTTP-transport polls every heartbeat), while an idle keep-alive
// connection would hold 8 KiB of net/http buffers, a goroutine and a file
// descriptor on the fleet for as long as the agent's transport keeps it —
// more than the agent's WebSocket itself (ws.go), and descriptors are
// capped at 20,000.
func closePlain(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		next.ServeHTTP(w, r)
	})
}
