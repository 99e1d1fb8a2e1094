package blob

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// partSize is the multipart chunk size. minio-go buffers one part at a time
// for readers of unknown size, so this bounds Put's memory, while keeping a
// multi-GiB model well under S3's 10,000-part limit.
const partSize = 16 << 20

// S3Config says how to reach an S3-compatible object store.
type S3Config struct {
	// Endpoint is host:port; a URL such as https://host:port also works
	// and then decides Secure.
	Endpoint  string
	AccessKey string
	SecretKey string
	Bucket    string
	Region    string
	Secure    bool
}

// S3ConfigFromEnv reads the INFER_S3_* variables. ok is false when
// INFER_S3_ENDPOINT is unset, meaning no S3 store is configured.
func S3ConfigFromEnv() (cfg S3Config, ok bool) {
	cfg = S3Config{
		Endpoint:  os.Getenv("INFER_S3_ENDPOINT"),
		AccessKey: os.Getenv("INFER_S3_ACCESS_KEY"),
		SecretKey: os.Getenv("INFER_S3_SECRET_KEY"),
		Bucket:    os.Getenv("INFER_S3_BUCKET"),
		Region:    os.Getenv("INFER_S3_REGION"),
	}
	if cfg.Bucket == "" {
		cfg.Bucket = "infer"
	}
	switch os.Getenv("INFER_S3_SECURE") {
	case "true", "1":
		cfg.Secure = true
	}
	return cfg, cfg.Endpoint != ""
}

// S3 is a Store in one bucket of an S3-compatible server.
type S3 struct {
	client *minio.Client
	bucket string
}

var _ Store = (*S3)(nil)

// NewS3 connects to the server and creates the bucket if it does not exist.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	s, err := OpenS3(cfg)
	if err != nil {
		return nil, err
	}
	// An object store that is still starting (compose, a pod restart, a
	// MinIO initialising its disks) answers errors for a few seconds;
	// wait for it rather than fail the whole process.
	wait := 100 * time.Millisecond
	deadline := time.Now().Add(startupWait)
	for {
		err := s.ensureBucket(ctx, cfg.Region)
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// OpenS3 returns a client for the bucket without contacting the server:
// a reader (a runner) learns that the store is down, or the bucket
// missing, from its first Open, as ErrUnavailable or ErrNotFound, and can
// report which — rather than wait for the server at start as NewS3 does.
func OpenS3(cfg S3Config) (*S3, error) {
	endpoint, secure := cfg.Endpoint, cfg.Secure
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil {
			// Not the *url.Error itself: it repeats the URL, which may
			// hold credentials.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("parsing S3 endpoint: %w", err)
		}
		endpoint, secure = u.Host, u.Scheme == "https"
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: secure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("creating S3 client: %w", err)
	}
	return &S3{client: client, bucket: cfg.Bucket}, nil
}

// startupWait is how long NewS3 waits for an object store that is not
// answering yet.
const startupWait = 30 * time.Second

func (s *S3) ensureBucket(ctx context.Context, region string) error {
	exists, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("checking bucket %s: %w", s.bucket, err)
	}
	if exists {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region})
	if err != nil {
		// Several processes starting together may all try to create it;
		// servers differ in which error the losers get, so ask again.
		if exists, err2 := s.client.BucketExists(ctx, s.bucket); err2 == nil && exists {
			return nil
		}
		return fmt.Errorf("creating bucket %s: %w", s.bucket, err)
	}
	slog.InfoContext(ctx, "created S3 bucket", "bucket", s.bucket)
	return nil
}

// Put uploads r in parts of partSize. On a reader error minio-go aborts the
// multipart upload (or drops the single PUT), so nothing appears at key, and
// the reader's error stays matchable with errors.Is.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkKey(key); err != nil {
		return err
	}
	// r goes to minio-go unwrapped: a file's ReadAt lets it upload parts in
	// parallel.
	_, err := s.client.PutObject(ctx, s.bucket, key, r, size, minio.PutObjectOptions{
		PartSize:    partSize,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// Open returns the object at key and its size. The reader stays usable only
// while ctx is.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := checkKey(key); err != nil {
		return nil, 0, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, s3Error("open", key, err)
	}
	// GetObject is lazy; Stat sends the request and surfaces a missing key.
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, 0, s3Error("open", key, err)
	}
	return s3Reader{obj, key}, info.Size, nil
}

// OpenRange sends one ranged GET for n bytes at off. It goes through
// minio-go's Core, which sends the request at once, so a missing key or an
// unreachable store shows here rather than at the first Read.
func (s *S3) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if err := checkRange(key, off, n); err != nil {
		return nil, err
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, fmt.Errorf("open %q: %w", key, err)
	}
	body, _, header, err := minio.Core{Client: s.client}.GetObject(ctx, s.bucket, key, opts)
	if err != nil {
		return nil, s3Error("open", key, err)
	}
	// A server that ignores Range answers 200 with the whole object; from
	// offset 0 the first n bytes are still the range, from anywhere else
	// they would be the wrong bytes.
	if start, ok := rangeStart(header.Get("Content-Range")); (!ok && off != 0) || (ok && start != off) {
		body.Close()
		return nil, fmt.Errorf("open %q: the object store did not answer the range request for offset %d (Content-Range %q)", key, off, header.Get("Content-Range"))
	}
	return newExactReader(s3Reader{body, key}, key, n), nil
}

// rangeStart parses the first byte of a Content-Range header such as
// "bytes 100-199/1000".
func rangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil
}

// Stat returns the size of the object at key.
func (s *S3) Stat(ctx context.Context, key string) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, s3Error("stat", key, err)
	}
	return info.Size, nil
}

// Delete removes the object at key.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchKey {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

// s3Reader marks a download cut short by the server or the network as
// ErrUnavailable, like a failed Open.
type s3Reader struct {
	io.ReadCloser
	key string
}

func (r s3Reader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = s3Error("read", r.key, err)
	}
	return n, err
}

func s3Error(op, key string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == minio.NoSuchKey || resp.Code == minio.NoSuchBucket:
		return fmt.Errorf("%s %q: %w", op, key, ErrNotFound)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		// Our own caller gave up; that says nothing about the store.
		return fmt.Errorf("%s %q: %w", op, key, err)
	case unavailable(err, resp):
		return fmt.Errorf("%s %q: %w: %w", op, key, ErrUnavailable, err)
	}
	return fmt.Errorf("%s %q: %w", op, key, err)
}

// unavailable reports whether an S3 call failed in a way that may pass:
// no S3 answer at all because the store could not be reached (see
// unreachable; minio-go has no status code for those), a server error, or
// throttling. A 4xx answer (access denied, a bad request) will be given
// again.
func unavailable(err error, resp minio.ErrorResponse) bool {
	switch s := resp.StatusCode; {
	case s == 0:
		return unreachable(err)
	case s >= 500, s == http.StatusRequestTimeout, s == http.StatusTooManyRequests:
		return true
	}
	return resp.Code == "SlowDown" || resp.Code == "ServiceUnavailable" || resp.Code == "RequestTimeout"
}

// unreachable reports whether err is the network failing between us and
// the store: a connection refused, reset or cut midway, a timeout, a name
// that does not resolve (yet: in compose or Kubernetes the store's name
// appears when it starts). A TLS failure is not: a certificate this host
// does not trust, a name it was not issued for, or a store that does not
// speak TLS fails the same way every time, and waiting hides the mistake.
func unreachable(err error) bool {
	var (
		verify  *tls.CertificateVerificationError
		record  tls.RecordHeaderError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
	)
	if errors.As(err, &verify) || errors.As(err, &record) || errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid) {
		return false
	}
	var (
		op      *net.OpError
		dns     *net.DNSError
		timeout interface{ Timeout() bool }
	)
	return errors.As(err, &op) || errors.As(err, &dns) ||
		(errors.As(err, &timeout) && timeout.Timeout()) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}
