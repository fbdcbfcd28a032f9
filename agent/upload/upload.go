package upload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	profilestorev1alpha1 "github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1"
	"github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1/profilestorev1alpha1connect"
	pushv1 "github.com/fleetprof/fleetprof/internal/pb/push/v1"
	"github.com/fleetprof/fleetprof/internal/pb/push/v1/pushv1connect"
	typesv1 "github.com/fleetprof/fleetprof/internal/pb/types/v1"
)

// Protocols.
const (
	ProtocolParca     = "parca"
	ProtocolPyroscope = "pyroscope"
)

// NameLabel holds the profile name; DefaultName is used when it is absent.
const (
	NameLabel   = "__name__"
	DefaultName = "process_cpu"
)

// Errors of the uploader.
var (
	// ErrConfig: a bad address, protocol or CA file.
	ErrConfig = errors.New("invalid upload config")
)

// Profile is one gzipped pprof profile of one target and window.
type Profile struct {
	// Labels of the target; NameLabel names the profile (default process_cpu).
	Labels map[string]string
	// Start of the window.
	Start time.Time
	// Duration of the window.
	Duration time.Duration
	// Data is the gzipped pprof profile.
	Data []byte
}

// Options configure an Uploader.
type Options struct {
	// Address of the backend: host:port, or a URL whose scheme (http or
	// https) overrides Insecure. Required.
	Address string
	// Protocol is "parca" (WriteRaw over gRPC; "" means parca) or "pyroscope"
	// (push over Connect).
	Protocol string
	// Insecure uses plaintext (h2c for gRPC) instead of TLS.
	Insecure bool
	// TLSCAFile is a PEM bundle of CAs to trust; "" means the system pool.
	TLSCAFile string
	// Token returns the bearer token; called per request so that a rotated
	// credential is picked up. nil means no Authorization header.
	Token func() string
	// OnUnauthorized, if set, is called when the backend answers 401; the
	// upload is then retried once with the then-current Token().
	OnUnauthorized func()
	// SpoolDir keeps batches that do not fit in memory on disk (and across
	// restarts); "" means memory only.
	SpoolDir string
	// MaxQueue is the number of batches held in memory; 0 means 64 (over
	// 10 minutes of 10 s windows).
	MaxQueue int
	// MaxQueueBytes bounds the memory held by queued batches; 0 means 64 MiB.
	MaxQueueBytes int64
	// MaxSpoolBytes bounds the spool; 0 means 256 MiB.
	MaxSpoolBytes int64
	// Timeout of one upload request; 0 means 30 s.
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the retry delay, which doubles per
	// failure and is jittered; 0 means 500 ms and 30 s.
	BackoffMin, BackoffMax time.Duration
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
	// Registerer for the uploader's metrics; nil means none are registered.
	Registerer prometheus.Registerer
}

// Uploader queues batches and sends them in order, one request per batch.
type Uploader struct {
	opts Options
	log  *zap.Logger
	q    *queue

	mu     sync.Mutex
	sender sender
	target string

	m metrics
}

type metrics struct {
	queued, spooled                     prometheus.GaugeFunc
	droppedBatches, droppedProfiles     prometheus.Counter
	sentBatches, sentProfiles, rejected prometheus.Counter
	errors                              *prometheus.CounterVec
}

// New builds an Uploader; nothing is sent before Run.
func New(opts Options) (*Uploader, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 64
	}
	if opts.MaxQueueBytes <= 0 {
		opts.MaxQueueBytes = 64 << 20
	}
	if opts.MaxSpoolBytes <= 0 {
		opts.MaxSpoolBytes = 256 << 20
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = 500 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 30 * time.Second
	}
	opts.BackoffMax = max(opts.BackoffMax, opts.BackoffMin)
	if opts.Token == nil {
		opts.Token = func() string { return "" }
	}
	u := &Uploader{opts: opts, log: opts.Logger}
	u.m = metrics{
		droppedBatches:  prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_upload_dropped_batches_total", Help: "Batches dropped (oldest first) because the upload queue was full."}),
		droppedProfiles: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_upload_dropped_profiles_total", Help: "Profiles in dropped in-memory batches."}),
		sentBatches:     prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_upload_sent_batches_total", Help: "Batches acknowledged by the backend."}),
		sentProfiles:    prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_upload_sent_profiles_total", Help: "Profiles acknowledged by the backend."}),
		rejected:        prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_upload_rejected_batches_total", Help: "Batches the backend refused for good (invalid or too large)."}),
		errors:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_upload_errors_total", Help: "Failed upload attempts by code."}, []string{"code"}),
	}
	u.q = &queue{
		notify: make(chan struct{}, 1), maxItems: opts.MaxQueue, maxBytes: opts.MaxQueueBytes,
		spoolDir: opts.SpoolDir, maxSpoolBytes: opts.MaxSpoolBytes,
		onDrop: func(b, p int) {
			u.m.droppedBatches.Add(float64(b))
			if p > 0 {
				u.m.droppedProfiles.Add(float64(p))
			}
		},
	}
	u.m.queued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleetprof_upload_queue_batches", Help: "Batches waiting in memory."},
		func() float64 { m, _, _, _ := u.q.lens(); return float64(m) })
	u.m.spooled = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleetprof_upload_spool_batches", Help: "Batches waiting in the spool."},
		func() float64 { _, s, _, _ := u.q.lens(); return float64(s) })
	if err := u.q.openSpool(); err != nil {
		return nil, err
	}
	if err := u.ApplyConfig(opts.Address, opts.Protocol, opts.Insecure); err != nil {
		return nil, err
	}
	if r := opts.Registerer; r != nil {
		for _, c := range []prometheus.Collector{u.m.queued, u.m.spooled, u.m.droppedBatches, u.m.droppedProfiles, u.m.sentBatches, u.m.sentProfiles, u.m.rejected, u.m.errors} {
			if err := r.Register(c); err != nil {
				return nil, fmt.Errorf("register upload metrics: %w", err)
			}
		}
	}
	return u, nil
}

// Enqueue adds one window's batch. It never blocks; when the queue is full
// the oldest batch is dropped and counted.
func (u *Uploader) Enqueue(batch []Profile) {
	if len(batch) == 0 {
		return
	}
	u.q.push(batch)
}

// QueueLen reports the batches waiting in memory and in the spool.
func (u *Uploader) QueueLen() (memory, spooled int) {
	m, s, _, _ := u.q.lens()
	return m, s
}

// ApplyConfig switches the upload target; the next request uses it.
func (u *Uploader) ApplyConfig(address, protocol string, insecure bool) error {
	if address == "" {
		return fmt.Errorf("empty upload address: %w", ErrConfig)
	}
	base := address
	switch {
	case strings.HasPrefix(address, "https://"):
		insecure = false
	case strings.HasPrefix(address, "http://"):
		insecure = true
	case insecure:
		base = "http://" + address
	default:
		base = "https://" + address
	}
	var tlsConf *tls.Config
	if !insecure {
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
		if u.opts.TLSCAFile != "" {
			pem, err := os.ReadFile(u.opts.TLSCAFile)
			if err != nil {
				return fmt.Errorf("read CA file: %w: %w", ErrConfig, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("CA file %s has no PEM certificates: %w", u.opts.TLSCAFile, ErrConfig)
			}
			tlsConf.RootCAs = pool
		}
	}
	var s sender
	switch protocol {
	case "", ProtocolParca:
		tr := &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true, Protocols: new(http.Protocols)}
		if insecure {
			tr.Protocols.SetUnencryptedHTTP2(true)
		} else {
			tr.Protocols.SetHTTP2(true)
		}
		s = parcaSender{profilestorev1alpha1connect.NewProfileStoreServiceClient(&http.Client{Transport: tr}, base, connect.WithGRPC())}
	case ProtocolPyroscope:
		tr := &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}
		s = pyroscopeSender{pushv1connect.NewPusherServiceClient(&http.Client{Transport: tr}, base)}
	default:
		return fmt.Errorf("protocol %q: want parca or pyroscope: %w", protocol, ErrConfig)
	}
	u.mu.Lock()
	u.sender, u.target = s, base
	u.mu.Unlock()
	u.log.Info("upload target", zap.String("address", base), zap.String("protocol", protocol))
	return nil
}

// Run sends queued batches in order until ctx ends; it returns nil then.
func (u *Uploader) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	for {
		it, batch := u.q.head()
		if it == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-u.q.notify:
				continue
			}
		}
		err := u.send(ctx, batch)
		if errors.Is(err, errUnauthorized) && u.opts.OnUnauthorized != nil {
			u.opts.OnUnauthorized()
			err = u.send(ctx, batch)
		}
		switch {
		case err == nil:
			u.q.done(it)
			u.m.sentBatches.Inc()
			u.m.sentProfiles.Add(float64(len(batch)))
			backoff = 0
			continue
		case ctx.Err() != nil:
			u.q.release()
			return nil
		case errors.Is(err, errPermanent):
			u.q.done(it)
			u.m.rejected.Inc()
			u.log.Warn("backend rejected a batch; dropped", zap.Int("profiles", len(batch)), zap.Error(err))
			continue
		}
		u.q.release()
		backoff = min(max(2*backoff, u.opts.BackoffMin), u.opts.BackoffMax)
		wait := backoff/2 + rand.N(backoff/2+1) // jitter in [backoff/2, backoff]
		u.log.Debug("upload failed; retrying", zap.Duration("in", wait), zap.Error(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

var (
	errUnauthorized = errors.New("unauthorized")
	errPermanent    = errors.New("rejected for good")
)

func (u *Uploader) send(ctx context.Context, batch []Profile) error {
	u.mu.Lock()
	s := u.sender
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, u.opts.Timeout)
	defer cancel()
	err := s.send(ctx, batch, u.opts.Token())
	if err == nil {
		return nil
	}
	code := connect.CodeOf(err)
	u.m.errors.WithLabelValues(code.String()).Inc()
	switch code {
	case connect.CodeUnauthenticated:
		return fmt.Errorf("%w: %w", errUnauthorized, err)
	case connect.CodeInvalidArgument, connect.CodeResourceExhausted:
		return fmt.Errorf("%w: %w", errPermanent, err)
	}
	return err
}

type sender interface {
	send(ctx context.Context, batch []Profile, token string) error
}

func sortedLabels(l map[string]string) [][2]string {
	out := make([][2]string, 0, len(l)+1)
	if _, ok := l[NameLabel]; !ok {
		out = append(out, [2]string{NameLabel, DefaultName})
	}
	for k, v := range l {
		out = append(out, [2]string{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

type parcaSender struct {
	c profilestorev1alpha1connect.ProfileStoreServiceClient
}

// WriteRawRequest builds the Parca request for a batch: one series per
// profile, labels sorted by name, normalized set (the agent symbolizes).
func WriteRawRequest(batch []Profile) *profilestorev1alpha1.WriteRawRequest {
	req := &profilestorev1alpha1.WriteRawRequest{Normalized: true}
	for _, p := range batch {
		ls := &profilestorev1alpha1.LabelSet{}
		for _, kv := range sortedLabels(p.Labels) {
			ls.Labels = append(ls.Labels, &profilestorev1alpha1.Label{Name: kv[0], Value: kv[1]})
		}
		req.Series = append(req.Series, &profilestorev1alpha1.RawProfileSeries{
			Labels:  ls,
			Samples: []*profilestorev1alpha1.RawSample{{RawProfile: p.Data}},
		})
	}
	return req
}

func (s parcaSender) send(ctx context.Context, batch []Profile, token string) error {
	req := connect.NewRequest(WriteRawRequest(batch))
	if token != "" {
		req.Header().Set("Authorization", "Bearer "+token)
	}
	_, err := s.c.WriteRaw(ctx, req)
	return err
}

type pyroscopeSender struct {
	c pushv1connect.PusherServiceClient
}

// serviceNameFrom are the labels that name a Pyroscope service_name when
// the target has none, in order of preference.
var serviceNameFrom = []string{"unit", "container", "pod", "comm"}

func (s pyroscopeSender) send(ctx context.Context, batch []Profile, token string) error {
	msg := &pushv1.PushRequest{}
	for _, p := range batch {
		var ls []*typesv1.LabelPair
		labels := sortedLabels(p.Labels)
		if _, ok := p.Labels["service_name"]; !ok {
			name := "fleetprof"
			for _, k := range serviceNameFrom {
				if v := p.Labels[k]; v != "" {
					name = v
					break
				}
			}
			labels = append(labels, [2]string{"service_name", name})
		}
		for _, kv := range labels {
			ls = append(ls, &typesv1.LabelPair{Name: kv[0], Value: kv[1]})
		}
		msg.Series = append(msg.Series, &pushv1.RawProfileSeries{
			Labels:  ls,
			Samples: []*pushv1.RawSample{{RawProfile: p.Data, ID: uuid.NewString()}},
		})
	}
	req := connect.NewRequest(msg)
	if token != "" {
		req.Header().Set("Authorization", "Bearer "+token)
	}
	_, err := s.c.Push(ctx, req)
	return err
}
