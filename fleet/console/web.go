package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// The web console: plain HTML, CSS and JavaScript modules, embedded so
// that `go build` needs no build step.
//
//go:embed web
var webFS embed.FS

// UI returns the handler of the web console's assets: /, /assets/...
func UI() http.Handler {
	sub, _ := fs.Sub(webFS, "web") // "web" is embedded above
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		p := path.Clean("/" + r.URL.Path)
		if p == "/" || p == "/index.html" || !strings.HasPrefix(p, "/assets/") {
			// Every page of the console is index.html; routes live after #.
			h.Set("Cache-Control", "no-cache")
			if p != "/" && p != "/index.html" {
				http.NotFound(w, r)
				return
			}
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/"
			files.ServeHTTP(w, r2)
			return
		}
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// RegisterUI mounts the web console on mux: the page at / and its
// assets under /assets/.
func (a *API) RegisterUI(mux *http.ServeMux) {
	ui := UI()
	mux.Handle("GET /{$}", ui)
	mux.Handle("GET /index.html", ui)
	mux.Handle("GET /assets/", ui)
}
