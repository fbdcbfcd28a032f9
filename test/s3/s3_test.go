package s3_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/fleetprof/fleetprof/test/s3"
)

// TestServer puts and gets an object through a real versitygw, and sees
// the server go away and come back with its data.
func TestServer(t *testing.T) {
	s := s3.New(t)
	bucket := s.Bucket(t)
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	data := []byte("profile bytes")
	if _, err := c.PutObject(ctx, bucket, "a/b/c.pb.gz", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	get := func() ([]byte, error) {
		o, err := c.GetObject(ctx, bucket, "a/b/c.pb.gz", minio.GetObjectOptions{})
		if err != nil {
			return nil, err
		}
		defer o.Close()
		return io.ReadAll(o)
	}
	if got, err := get(); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %q, %v", got, err)
	}
	s.StopServer()
	if _, err := get(); err == nil {
		t.Fatal("get from a stopped server succeeded")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := get(); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get after restart: %q, %v", got, err)
	}
}
