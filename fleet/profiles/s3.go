package profiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options locate a bucket of an S3-compatible object store.
type S3Options struct {
	// Endpoint is host[:port] of the object store, e.g.
	// s3.eu-west-1.amazonaws.com or 127.0.0.1:7070; required.
	Endpoint string
	// Bucket holds the blobs; required. It must exist.
	Bucket string
	// Prefix is prepended to every key ("" means none; a trailing slash
	// is added), so that one bucket can hold several stores.
	Prefix string
	// Region of the bucket; "" lets the client discover it.
	Region string
	// Insecure talks plain HTTP instead of HTTPS.
	Insecure bool
	// AccessKeyID and SecretAccessKey are the credentials; both empty
	// means anonymous access.
	AccessKeyID, SecretAccessKey string
	// Timeout bounds each operation, retries included; 0 means 30 s.
	Timeout time.Duration
	// MaxRetries of a failed request (the client backs off exponentially
	// with jitter, 200 ms up to 1 s between tries); 0 means 3.
	MaxRetries int
	// Transport for the HTTP requests; nil means minio-go's default with
	// a 5 s dial timeout.
	Transport http.RoundTripper
}

// S3Blobs keeps blobs as objects <Prefix><key> in a bucket, with minio-go.
// Errors other than a missing object wrap ErrUnavailable and name the
// bucket and key.
type S3Blobs struct {
	c       *minio.Client
	bucket  string
	prefix  string
	timeout time.Duration
}

var _ Blobs = (*S3Blobs)(nil)

// NewS3Blobs connects to the object store and checks that the bucket is
// reachable with the credentials; the error says which part failed.
func NewS3Blobs(ctx context.Context, o S3Options) (*S3Blobs, error) {
	if o.Endpoint == "" || o.Bucket == "" {
		return nil, fmt.Errorf("s3 blobs: endpoint and bucket are required: %w", ErrInvalid)
	}
	if strings.Contains(o.Endpoint, "://") {
		return nil, fmt.Errorf("s3 endpoint %q: want host[:port] without a scheme (plain HTTP: insecure): %w", o.Endpoint, ErrInvalid)
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 3
	}
	tr := o.Transport
	if tr == nil {
		t, err := minio.DefaultTransport(!o.Insecure)
		if err != nil {
			return nil, fmt.Errorf("s3 transport: %w", err)
		}
		t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		t.ResponseHeaderTimeout = o.Timeout
		tr = t
	}
	var creds *credentials.Credentials
	if o.AccessKeyID != "" || o.SecretAccessKey != "" {
		creds = credentials.NewStaticV4(o.AccessKeyID, o.SecretAccessKey, "")
	} else {
		creds = credentials.New(&credentials.Static{Value: credentials.Value{SignerType: credentials.SignatureAnonymous}})
	}
	c, err := minio.New(o.Endpoint, &minio.Options{
		Creds: creds, Secure: !o.Insecure, Region: o.Region, Transport: tr, MaxRetries: o.MaxRetries + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", o.Endpoint, err)
	}
	prefix := strings.Trim(o.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	b := &S3Blobs{c: c, bucket: o.Bucket, prefix: prefix, timeout: o.Timeout}
	cctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	ok, err := c.BucketExists(cctx, o.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3 bucket %s at %s: %w: %w", o.Bucket, o.Endpoint, ErrUnavailable, err)
	}
	if !ok {
		return nil, fmt.Errorf("s3 bucket %s at %s does not exist: %w", o.Bucket, o.Endpoint, ErrInvalid)
	}
	return b, nil
}

// String names the bucket and prefix, for logs.
func (b *S3Blobs) String() string { return "s3://" + b.bucket + "/" + b.prefix }

func (b *S3Blobs) wrap(op, key string, err error) error {
	if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
		return fmt.Errorf("%s s3://%s/%s%s: %w: %w", op, b.bucket, b.prefix, key, fs.ErrNotExist, err)
	}
	return fmt.Errorf("%s s3://%s/%s%s: %w: %w", op, b.bucket, b.prefix, key, ErrUnavailable, err)
}

// Put implements Blobs with one PutObject.
func (b *S3Blobs) Put(ctx context.Context, key string, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	_, err := b.c.PutObject(ctx, b.bucket, b.prefix+key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
	if err != nil {
		return b.wrap("put", key, err)
	}
	return nil
}

// Get implements Blobs.
func (b *S3Blobs) Get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	obj, err := b.c.GetObject(ctx, b.bucket, b.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, b.wrap("get", key, err)
	}
	defer obj.Close()
	data, err := io.ReadAll(obj)
	if err != nil {
		return nil, b.wrap("get", key, err)
	}
	return data, nil
}

// Exists implements Blobs with StatObject.
func (b *S3Blobs) Exists(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	_, err := b.c.StatObject(ctx, b.bucket, b.prefix+key, minio.StatObjectOptions{})
	if err == nil {
		return true, nil
	}
	if err := b.wrap("stat", key, err); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else {
		return false, err
	}
}

// Delete implements Blobs: RemoveObject for one key, a bulk delete
// (RemoveObjects) for several.
func (b *S3Blobs) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if len(keys) == 1 {
		if err := b.c.RemoveObject(ctx, b.bucket, b.prefix+keys[0], minio.RemoveObjectOptions{}); err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchKey {
			return b.wrap("delete", keys[0], err)
		}
		return nil
	}
	objs := iter.Seq[minio.ObjectInfo](func(yield func(minio.ObjectInfo) bool) {
		for _, k := range keys {
			if !yield(minio.ObjectInfo{Key: b.prefix + k}) {
				return
			}
		}
	})
	res, err := b.c.RemoveObjectsWithIter(ctx, b.bucket, objs, minio.RemoveObjectsOptions{})
	if err != nil {
		return b.wrap("delete", keys[0], err)
	}
	var errs []error
	for r := range res {
		if r.Err != nil && minio.ToErrorResponse(r.Err).Code != minio.NoSuchKey {
			errs = append(errs, b.wrap("delete", strings.TrimPrefix(r.ObjectName, b.prefix), r.Err))
			if len(errs) >= 3 {
				break // the rest fail alike
			}
		}
	}
	return errors.Join(errs...)
}

// List implements Blobs with a recursive ListObjects under the prefix.
func (b *S3Blobs) List(ctx context.Context, prefix string, fn func(BlobInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn fails
	for o := range b.c.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return b.wrap("list", prefix, o.Err)
		}
		if err := fn(BlobInfo{Key: strings.TrimPrefix(o.Key, b.prefix), Size: o.Size, Modified: o.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Exclusive implements Blobs: other replicas may write to the bucket.
func (b *S3Blobs) Exclusive() bool { return false }
