package profiles

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Blobs holds the immutable profile blobs of a store, by key. Keys are
// slash-separated relative paths such as
// projects/p1/2025/03/01/12/1740830400000000000-9f86d081884c7d65.pb.gz.
// Implementations: DirBlobs (a local directory) and S3Blobs (a bucket of
// an S3-compatible object store). All methods are goroutine-safe.
type Blobs interface {
	// Put stores data under key; when it returns nil the blob is durable.
	// An existing blob of that key is replaced.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns the blob of key; the error wraps fs.ErrNotExist when
	// there is none.
	Get(ctx context.Context, key string) ([]byte, error)
	// Exists reports whether the blob of key is there.
	Exists(ctx context.Context, key string) (bool, error)
	// Delete removes the blobs of keys; missing ones are not an error.
	Delete(ctx context.Context, keys ...string) error
	// List calls fn for every blob whose key starts with prefix, in no
	// particular order, and stops at fn's first error, which it returns.
	List(ctx context.Context, prefix string, fn func(BlobInfo) error) error
	// Exclusive reports whether only this process writes the blobs, so
	// that a cleanup at startup may remove every unindexed blob at once;
	// when false, it leaves those younger than Options.OrphanGrace alone.
	Exclusive() bool
	// String names the location, such as "local" or
	// "s3://bucket/prefix/". An index records it and refuses to open with
	// blobs elsewhere.
	String() string
}

// localBlobs is the location of blobs in the store's directory.
const localBlobs = "local"

// BlobInfo describes a listed blob.
type BlobInfo struct {
	Key      string
	Size     int64
	Modified time.Time
}

// blobKey is where a new profile that started at t goes:
// projects/<project>/<yyyy>/<mm>/<dd>/<hh>/<unix ns>-<random>.pb.gz. Keys
// sort by time within a project, so a time range is a few prefixes.
func blobKey(projectID string, t time.Time) string {
	return "projects/" + projectDir(projectID) + "/" + t.UTC().Format("2006/01/02/15") +
		fmt.Sprintf("/%d-%s.pb.gz", t.UnixNano(), randHex())
}

// DirBlobs keeps blobs as files under a local directory: each is written
// to a temp file beside its final name, fsynced, then renamed, so a crash
// leaves at worst a stray temp file (an orphan for the cleanup).
type DirBlobs struct {
	dir string
}

var _ Blobs = (*DirBlobs)(nil)

// NewDirBlobs returns the blobs under dir, creating it if needed.
func NewDirBlobs(dir string) (*DirBlobs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create blob dir: %w", err)
	}
	return &DirBlobs{dir: dir}, nil
}

func (b *DirBlobs) path(key string) (string, error) {
	if !fs.ValidPath(key) || key == "." {
		return "", fmt.Errorf("blob key %q: %w", key, ErrInvalid)
	}
	return filepath.Join(b.dir, filepath.FromSlash(key)), nil
}

// Put implements Blobs: temp file, fsync, rename. The directory is not
// fsynced (see syncKeyDir).
func (b *DirBlobs) Put(_ context.Context, key string, data []byte) error {
	final, err := b.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return fmt.Errorf("create blob dir: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(final), ".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp blob: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, final)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write blob %s: %w", key, werr)
	}
	return nil
}

// syncKeyDir fsyncs the directory of key, making its rename durable.
func (b *DirBlobs) syncKeyDir(key string) error {
	p, err := b.path(key)
	if err != nil {
		return err
	}
	return syncDir(filepath.Dir(p))
}

// Get implements Blobs.
func (b *DirBlobs) Get(_ context.Context, key string) ([]byte, error) {
	p, err := b.path(key)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read blob: %w", err)
	}
	return data, nil
}

// Exists implements Blobs.
func (b *DirBlobs) Exists(_ context.Context, key string) (bool, error) {
	p, err := b.path(key)
	if err != nil {
		return false, err
	}
	switch _, err := os.Stat(p); {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("stat blob %s: %w", key, err)
	}
}

// Delete implements Blobs.
func (b *DirBlobs) Delete(_ context.Context, keys ...string) error {
	var errs []error
	for _, k := range keys {
		p, err := b.path(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete blob: %w", err))
		}
	}
	return errors.Join(errs...)
}

// List implements Blobs; temp files of unfinished writes are listed too.
func (b *DirBlobs) List(ctx context.Context, prefix string, fn func(BlobInfo) error) error {
	err := filepath.WalkDir(b.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // vanished meanwhile
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rel, _ := filepath.Rel(b.dir, path)
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if path != b.dir && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil // vanished meanwhile
		}
		return fn(BlobInfo{Key: key, Size: info.Size(), Modified: info.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("list blobs: %w", err)
	}
	return nil
}

// Exclusive implements Blobs: a directory belongs to one store.
func (b *DirBlobs) Exclusive() bool { return true }

// String implements Blobs: "local", whatever the path (data dirs move).
func (b *DirBlobs) String() string { return localBlobs }

// pruneEmptyDirs removes the empty directories below the root.
func (b *DirBlobs) pruneEmptyDirs() {
	var dirs []string
	filepath.WalkDir(b.dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && path != b.dir {
			dirs = append(dirs, path)
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		os.Remove(d) // only succeeds when empty
	}
}
