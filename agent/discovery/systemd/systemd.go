package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/agent/discovery"
)

// DefaultAddress is the system bus.
const DefaultAddress = "unix:path=/run/dbus/system_bus_socket"

// Options configure a Discoverer.
type Options struct {
	// Address is the D-Bus address of the system bus systemd serves on; ""
	// means DBUS_SYSTEM_BUS_ADDRESS or DefaultAddress. A systemd in other
	// namespaces is reachable as unix:path=/proc/<pid>/root/run/dbus/system_bus_socket.
	Address string
	// Units are unit name globs ("nginx.service", "docker-*.scope"); a unit
	// matching none is not a target. SetUnits changes them live.
	Units []string
	// Node is the value of the node label; "" leaves it to the Index.
	Node string
	// Resync is how often the units are listed again even without D-Bus
	// signals; 0 means 30s.
	Resync time.Duration
	// Debounce is how long signals are gathered before the units are listed
	// again; 0 means 200ms.
	Debounce time.Duration
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
}

// Discoverer sends one target per active unit matching the globs.
type Discoverer struct {
	opts  Options
	mu    sync.Mutex
	units []string
	poke  chan struct{}
}

// New returns a Discoverer; it connects in Run.
func New(opts Options) *Discoverer {
	if opts.Address == "" {
		opts.Address = os.Getenv("DBUS_SYSTEM_BUS_ADDRESS")
	}
	if opts.Address == "" {
		opts.Address = DefaultAddress
	}
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 200 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Discoverer{opts: opts, units: slices.Clone(opts.Units), poke: make(chan struct{}, 1)}
}

// SetUnits replaces the unit globs; the next update follows them.
func (d *Discoverer) SetUnits(globs []string) {
	d.mu.Lock()
	d.units = slices.Clone(globs)
	d.mu.Unlock()
	d.wake()
}

func (d *Discoverer) wake() {
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

// dial opens an authenticated private connection to the bus at address.
func dial(address string) (*dbus.Conn, error) {
	conn, err := dbus.Dial(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	auth := []dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}
	if err := conn.Auth(auth); err != nil {
		conn.Close()
		return nil, fmt.Errorf("authenticate on %s: %w", address, err)
	}
	if err := conn.Hello(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello on %s: %w", address, err)
	}
	return conn, nil
}

// Connect opens a go-systemd connection to the bus at address.
func Connect(address string) (*sddbus.Conn, error) {
	c, err := sddbus.NewConnection(func() (*dbus.Conn, error) { return dial(address) })
	if err != nil {
		return nil, fmt.Errorf("connect to systemd: %w", err)
	}
	return c, nil
}

// subscribe opens a connection that receives systemd's unit signals
// (UnitNew, UnitRemoved, JobRemoved, PropertiesChanged) on ch.
func subscribe(address string, ch chan *dbus.Signal) (*dbus.Conn, error) {
	conn, err := dial(address)
	if err != nil {
		return nil, err
	}
	for _, m := range [][]dbus.MatchOption{
		{dbus.WithMatchInterface("org.freedesktop.systemd1.Manager")},
		{dbus.WithMatchInterface("org.freedesktop.DBus.Properties"), dbus.WithMatchMember("PropertiesChanged"), dbus.WithMatchPathNamespace("/org/freedesktop/systemd1/unit")},
	} {
		if err := conn.AddMatchSignal(m...); err != nil {
			conn.Close()
			return nil, fmt.Errorf("add signal match: %w", err)
		}
	}
	conn.Signal(ch)
	if err := conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").Call("org.freedesktop.systemd1.Manager.Subscribe", 0).Err; err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscribe to systemd signals: %w", err)
	}
	return conn, nil
}

// signalUnit returns the unit a signal is about ("" if none).
func signalUnit(s *dbus.Signal) string {
	switch s.Name {
	case "org.freedesktop.systemd1.Manager.UnitNew", "org.freedesktop.systemd1.Manager.UnitRemoved":
		if len(s.Body) > 0 {
			n, _ := s.Body[0].(string)
			return n
		}
	case "org.freedesktop.systemd1.Manager.JobRemoved":
		if len(s.Body) > 2 {
			n, _ := s.Body[2].(string)
			return n
		}
	case "org.freedesktop.DBus.Properties.PropertiesChanged":
		if p, ok := strings.CutPrefix(string(s.Path), "/org/freedesktop/systemd1/unit/"); ok {
			return unescapePath(p)
		}
	}
	return ""
}

// unescapePath decodes systemd's object path escaping ("_2d" for "-").
func unescapePath(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '_' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Run follows the units until ctx ends. It (re)connects to D-Bus as needed;
// while systemd is unreachable it sends an empty set once and retries every
// Resync.
func (d *Discoverer) Run(ctx context.Context, up chan<- []discovery.Target) error {
	sentEmpty := false
	for {
		err := d.session(ctx, up)
		if ctx.Err() != nil {
			return nil
		}
		d.opts.Logger.Warn("systemd discovery", zap.Error(err))
		if !sentEmpty {
			select {
			case up <- nil:
				sentEmpty = true
			case <-ctx.Done():
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d.opts.Resync):
		}
	}
}

// session runs over one connection until it fails or ctx ends.
func (d *Discoverer) session(ctx context.Context, up chan<- []discovery.Target) error {
	conn, err := Connect(d.opts.Address)
	if err != nil {
		return err
	}
	defer conn.Close()
	signals := make(chan *dbus.Signal, 1024)
	sigconn, err := subscribe(d.opts.Address, signals)
	if err != nil {
		return err
	}
	defer sigconn.Close()

	tick := time.NewTicker(d.opts.Resync)
	defer tick.Stop()
	for {
		targets, err := d.List(ctx, conn)
		if err != nil {
			return err
		}
		select {
		case up <- targets:
		case <-ctx.Done():
			return nil
		}
		changed := false
		for !changed {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				changed = true
			case <-d.poke:
				changed = true
			case sig, ok := <-signals:
				if !ok {
					return errors.New("systemd D-Bus signal connection closed")
				}
				changed = d.match(signalUnit(sig))
			}
			if !conn.Connected() || !sigconn.Connected() {
				return errors.New("systemd D-Bus connection closed")
			}
		}
		// Gather a burst of signals into one listing.
		timer := time.NewTimer(d.opts.Debounce)
	drain:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil
			case _, ok := <-signals:
				if !ok {
					timer.Stop()
					return errors.New("systemd D-Bus signal connection closed")
				}
			case <-timer.C:
				break drain
			}
		}
	}
}

// match reports whether unit matches a glob.
func (d *Discoverer) match(unit string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, g := range d.units {
		if ok, _ := path.Match(g, unit); ok {
			return true
		}
	}
	return false
}

// activeStates are the unit states in which a unit can have processes.
var activeStates = []string{"active", "activating", "reloading", "deactivating"}

// List returns one target per active unit matching the globs, labelled
// systemd_unit (and node), with the unit's ControlGroup as its cgroup.
func (d *Discoverer) List(ctx context.Context, conn *sddbus.Conn) ([]discovery.Target, error) {
	d.mu.Lock()
	globs := slices.Clone(d.units)
	d.mu.Unlock()
	if len(globs) == 0 {
		return nil, nil
	}
	units, err := conn.ListUnitsByPatternsContext(ctx, activeStates, globs)
	if err != nil {
		return nil, fmt.Errorf("list units %v: %w", globs, err)
	}
	slices.SortFunc(units, func(a, b sddbus.UnitStatus) int { return strings.Compare(a.Name, b.Name) })
	var out []discovery.Target
	for _, u := range units {
		cg, err := ControlGroup(ctx, conn, u.Name)
		if err != nil {
			// Gone between the listing and this call.
			d.opts.Logger.Debug("unit control group", zap.String("unit", u.Name), zap.Error(err))
			continue
		}
		if cg == "" {
			continue
		}
		l := map[string]string{discovery.LabelSystemdUnit: u.Name, "__meta_systemd_unit_description": u.Description}
		if d.opts.Node != "" {
			l[discovery.LabelNode] = d.opts.Node
		}
		out = append(out, discovery.Target{Labels: l, Source: discovery.SourceSystemd, Cgroups: []string{cg}})
	}
	return out, nil
}

// ControlGroup returns a unit's ControlGroup property ("/system.slice/x.service").
func ControlGroup(ctx context.Context, conn *sddbus.Conn, unit string) (string, error) {
	typ := unitType(unit)
	if typ == "" {
		return "", fmt.Errorf("unit %q: no cgroup for this unit type", unit)
	}
	p, err := conn.GetUnitTypePropertyContext(ctx, unit, typ, "ControlGroup")
	if err != nil {
		return "", fmt.Errorf("get ControlGroup of %s: %w", unit, err)
	}
	s, ok := p.Value.Value().(string)
	if !ok {
		return "", fmt.Errorf("ControlGroup of %s is %s, not a string", unit, p.Value.Signature())
	}
	return s, nil
}

// unitType maps a unit name's suffix to its D-Bus interface suffix.
func unitType(unit string) string {
	switch path.Ext(unit) {
	case ".service":
		return "Service"
	case ".scope":
		return "Scope"
	case ".socket":
		return "Socket"
	case ".mount":
		return "Mount"
	case ".swap":
		return "Swap"
	case ".slice":
		return "Slice"
	}
	return ""
}
