package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// remoteWeights reports whether a --weights value names a file to download
// rather than a local path.
func remoteWeights(s string) bool {
	for _, p := range []string{"http://", "https://", "s3://"} {
		if strings.HasPrefix(strings.ToLower(s), p) {
			return true
		}
	}
	return false
}

// downloadMeta describes a download in progress, saved next to its
// .partial file: the validators that say whether the bytes already there
// still belong to the source, and the digests the source declared.
type downloadMeta struct {
	Source       string `json:"source"` // scheme://host/path: no query, no credentials
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Size         int64  `json:"size"` // -1: the source did not say
	SHA256       string `json:"sha256,omitempty"`
	MD5          string `json:"md5,omitempty"`
}

// opened is one response of a source: its body starts at offset start (0
// when the source sent the whole object again), and meta is what it says
// of the object now.
type opened struct {
	body  io.ReadCloser
	start int64
	meta  downloadMeta
}

// source opens a remote object from offset off; prev describes the bytes
// already downloaded (empty when there are none), so that a source whose
// object changed since sends it from the start.
type source interface {
	open(ctx context.Context, off int64, prev downloadMeta) (opened, error)
}

// downloader fetches weights into dir, resuming what an earlier,
// interrupted run left there.
type downloader struct {
	dir string
	// notes gets one line when a download starts, resumes or restarts;
	// nil says nothing (--json).
	notes io.Writer
	// bar shows progress on a terminal; nil shows none.
	bar func(size int64, desc string) *progressbar.ProgressBar
	// retries is how many times a dropped connection is resumed within
	// one run; retryWait is the first pause, doubled each time.
	retries   int
	retryWait time.Duration
	// held, if not nil, is asked about a sha256 the source declares before
	// its bytes are downloaded: true skips the download (the server holds
	// the weights already).
	held func(ctx context.Context, sha string) (bool, error)
}

// errHeld stops a download whose declared digest the server holds.
type errHeld struct{ sha string }

func (e errHeld) Error() string { return "the server holds " + e.sha }

// downloadsDir is where unfinished downloads wait to be resumed:
// $INFER_HOME/downloads, else the user's cache directory.
func downloadsDir() (string, error) {
	if h := os.Getenv("INFER_HOME"); h != "" {
		return filepath.Join(h, "downloads"), nil
	}
	c, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no directory for downloads (set $INFER_HOME): %w", err)
	}
	return filepath.Join(c, "infer", "downloads"), nil
}

// cacheKey names a source's files in the downloads directory. The query is
// left out: a presigned URL signed again names the same object, and the
// saved ETag tells whether its bytes are still the same.
func cacheKey(src string) (key, shown string) {
	u, err := url.Parse(src)
	if err != nil {
		h := sha256.Sum256([]byte(src))
		return hex.EncodeToString(h[:8]), "(unparsable URL)"
	}
	shown = strings.ToLower(u.Scheme) + "://" + u.Host + u.EscapedPath()
	h := sha256.Sum256([]byte(shown))
	base := strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, path.Base(u.Path))
	if len(base) > 64 {
		base = base[len(base)-64:]
	}
	return hex.EncodeToString(h[:8]) + "-" + strings.TrimLeft(base, "."), shown
}

// ggufMagic begins every GGUF file; anything else is refused before the
// rest is downloaded or anything uploaded.
var ggufMagic = []byte("GGUF")

// errNotGGUF is a source whose first bytes are not GGUF's magic.
var errNotGGUF = errors.New("not a GGUF file")

// fetch downloads rawURL from s into the downloads directory and returns the
// complete file's path and the sha256 of its bytes. A download cut short
// is resumed where it stopped, by this run (d.retries times) or the next
// one with the same source. The path is empty when d.held said the server
// holds the digest the source declared: nothing was downloaded.
func (d *downloader) fetch(ctx context.Context, rawURL string, s source) (string, string, error) {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return "", "", err
	}
	key, shown := cacheKey(rawURL)
	// Two runs appending to one file would corrupt it; the lock goes with
	// the process, so a killed run leaves none behind.
	lock, err := os.OpenFile(filepath.Join(d.dir, key+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return "", "", fmt.Errorf("another infer is downloading %s into %s; wait for it or stop it (%w)", shown, d.dir, err)
	}
	defer os.Remove(lock.Name())
	partial := filepath.Join(d.dir, key+".partial")
	metaPath := filepath.Join(d.dir, key+".json")
	prev := readMeta(metaPath, shown)
	if prev.Source == "" {
		// No record of what the bytes are: they cannot be resumed.
		os.Remove(partial)
	}
	wait := d.retryWait
	for attempt := 0; ; attempt++ {
		meta, err := d.once(ctx, s, partial, metaPath, shown, prev)
		if err == nil {
			prev = meta
			break
		}
		var h errHeld
		if errors.As(err, &h) {
			return "", h.sha, nil
		}
		var ue usageError
		if errors.As(err, &ue) {
			return "", "", err // the URL's fault: trying again changes nothing
		}
		if ctx.Err() != nil || attempt >= d.retries {
			if st, serr := os.Stat(partial); serr == nil && st.Size() > 0 {
				return "", "", fmt.Errorf("downloading %s: %w (%s kept in %s; run the same command again to resume)", shown, err, humanBytes(st.Size()), d.dir)
			}
			return "", "", fmt.Errorf("downloading %s: %w", shown, err)
		}
		prev = readMeta(metaPath, shown)
		d.note("download of %s interrupted (%v); resuming in %s", shown, err, wait)
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
	sha, err := verify(partial, prev)
	if err != nil {
		// Bytes that do not match the source's digest cannot be resumed
		// into a correct file either.
		os.Remove(partial)
		os.Remove(metaPath)
		return "", "", fmt.Errorf("downloading %s: %w", shown, err)
	}
	done := filepath.Join(d.dir, strings.TrimSuffix(key, ".gguf")+".gguf")
	if err := os.Rename(partial, done); err != nil {
		return "", "", err
	}
	os.Remove(metaPath)
	return done, sha, nil
}

// once makes one request and appends what it brings to partial.
func (d *downloader) once(ctx context.Context, s source, partial, metaPath, shown string, prev downloadMeta) (_ downloadMeta, err error) {
	var off int64
	if st, err := os.Stat(partial); err == nil {
		off = st.Size()
	}
	if off == 0 {
		prev = downloadMeta{}
	}
	o, err := s.open(ctx, off, prev)
	if err != nil {
		return prev, err
	}
	defer o.body.Close()
	o.meta.Source = shown
	if o.meta.SHA256 != "" && d.held != nil {
		held, err := d.held(ctx, o.meta.SHA256)
		if err != nil {
			return prev, err
		}
		if held {
			os.Remove(partial)
			os.Remove(metaPath)
			return prev, errHeld{o.meta.SHA256}
		}
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	switch {
	case o.start == 0 && off > 0 && prev.ETag == "" && prev.LastModified == "":
		d.note("%s has no ETag or Last-Modified to resume by; downloading it again from the start", shown)
		flags |= os.O_TRUNC
		off = 0
	case o.start == 0 && off > 0 && o.meta.ETag == prev.ETag && o.meta.LastModified == prev.LastModified:
		d.note("the server of %s does not resume downloads (it ignored Range); downloading it again from the start", shown)
		flags |= os.O_TRUNC
		off = 0
	case o.start == 0 && off > 0:
		d.note("%s changed since the download began (it was %s); starting again", shown, validatorOf(prev))
		flags |= os.O_TRUNC
		off = 0
	case o.start != off:
		return prev, fmt.Errorf("asked for bytes from %d, got them from %d", off, o.start)
	case off > 0:
		d.note("resuming %s at %s of %s", shown, humanBytes(off), sizeText(o.meta.Size))
	default:
		d.note("downloading %s (%s) into %s", shown, sizeText(o.meta.Size), d.dir)
	}
	// The record goes first: the bytes in partial are always described
	// by it.
	if err := writeMeta(metaPath, o.meta); err != nil {
		return prev, err
	}
	f, err := os.OpenFile(partial, flags, 0o600)
	if err != nil {
		return prev, err
	}
	defer f.Close()
	var body io.Reader = o.body
	if off == 0 {
		// The magic is checked before anything else is downloaded.
		head := make([]byte, len(ggufMagic))
		n, err := io.ReadFull(o.body, head)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return o.meta, err
		}
		if !bytes.Equal(head[:n], ggufMagic) {
			f.Close()
			os.Remove(partial)
			os.Remove(metaPath)
			return o.meta, usageError{fmt.Errorf("--weights %s: %w (it begins %q, not %q); nothing was uploaded", shown, errNotGGUF, head[:n], ggufMagic)}
		}
		body = io.MultiReader(bytes.NewReader(head), o.body)
	}
	var w io.Writer = f
	if d.bar != nil {
		// The bar counts this response's bytes only, so that its rate is
		// the network's, not inflated by the bytes resumed.
		size, desc := o.meta.Size, "downloading "+path.Base(shown)
		if off > 0 && size >= 0 {
			size -= off
			desc += " (from " + humanBytes(off) + ")"
		}
		bar := d.bar(size, desc)
		w = io.MultiWriter(f, bar)
		defer func() {
			if err == nil {
				bar.Finish()
				return
			}
			// Where it stopped, not the 100% Finish would draw.
			bar.Exit()
			d.note("")
		}()
	}
	n, err := io.Copy(w, body)
	if err != nil {
		return o.meta, err
	}
	if o.meta.Size >= 0 && off+n < o.meta.Size {
		err = fmt.Errorf("the connection closed after %s of %s: %w", humanBytes(off+n), humanBytes(o.meta.Size), io.ErrUnexpectedEOF)
		return o.meta, err
	}
	err = f.Close()
	return o.meta, err
}

func (d *downloader) note(format string, args ...any) {
	if d.notes != nil {
		fmt.Fprintf(d.notes, format+"\n", args...)
	}
}

// verify checks a complete download against the size and digests its
// source declared, and returns its sha256.
func verify(file string, m downloadMeta) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sh, md := sha256.New(), md5.New()
	var w io.Writer = sh
	if m.MD5 != "" {
		w = io.MultiWriter(sh, md)
	}
	n, err := io.Copy(w, f)
	if err != nil {
		return "", err
	}
	if m.Size >= 0 && n != m.Size {
		return "", fmt.Errorf("got %d bytes, the source said %d", n, m.Size)
	}
	sum := hex.EncodeToString(sh.Sum(nil))
	if m.SHA256 != "" && sum != m.SHA256 {
		return "", fmt.Errorf("sha256 %s does not match the %s the source declared", sum, m.SHA256)
	}
	if m.MD5 != "" {
		if got := hex.EncodeToString(md.Sum(nil)); got != m.MD5 {
			return "", fmt.Errorf("md5 %s does not match the source's ETag %s", got, m.MD5)
		}
	}
	return sum, nil
}

func readMeta(p, source string) downloadMeta {
	var m downloadMeta
	b, err := os.ReadFile(p)
	if err != nil || json.Unmarshal(b, &m) != nil || m.Source != source {
		return downloadMeta{}
	}
	return m
}

func writeMeta(p string, m downloadMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func validatorOf(m downloadMeta) string {
	if m.ETag != "" {
		return "ETag " + m.ETag
	}
	return "last modified " + m.LastModified
}

func sizeText(n int64) string {
	if n < 0 {
		return "size unknown"
	}
	return humanBytes(n)
}

// ---------------------------------------------------------------- http(s)

// httpSource is an http:// or https:// URL.
type httpSource struct {
	url    string
	shown  string // without query or credentials, for messages
	client *http.Client
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (s httpSource) open(ctx context.Context, off int64, prev downloadMeta) (opened, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return opened{}, usageError{fmt.Errorf("--weights %s: %w", s.shown, err)}
	}
	// Bytes already here are resumed only under a validator: If-Range
	// makes the server send the whole, new object when it changed. A weak
	// ETag cannot vouch for bytes, so Last-Modified stands in.
	if off > 0 {
		switch {
		case prev.ETag != "" && !strings.HasPrefix(prev.ETag, "W/"):
			req.Header.Set("If-Range", prev.ETag)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
		case prev.LastModified != "":
			req.Header.Set("If-Range", prev.LastModified)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
		}
	}
	// Compressed bytes would not match the object's size or offsets.
	req.Header.Set("Accept-Encoding", "identity")
	// A redirect (Hugging Face's resolve URLs) carries the object's
	// sha256 and size on the response that redirects.
	var linked http.Header
	client := *s.client
	client.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		if r.Response != nil && linked == nil && r.Response.Header.Get("X-Linked-Etag") != "" {
			linked = r.Response.Header
		}
		return nil
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, query and all
		}
		return opened{}, err
	}
	var o opened
	switch resp.StatusCode {
	case http.StatusOK:
		o.meta.Size = resp.ContentLength
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			resp.Body.Close()
			return opened{}, fmt.Errorf("unreadable Content-Range %q", resp.Header.Get("Content-Range"))
		}
		o.start, o.meta.Size = start, total
	case http.StatusRequestedRangeNotSatisfiable:
		// More bytes here than the object has: they are not its.
		resp.Body.Close()
		return s.open(ctx, 0, downloadMeta{})
	default:
		resp.Body.Close()
		return opened{}, httpSourceError(s.shown, resp.StatusCode)
	}
	if resp.Header.Get("Content-Encoding") != "" && resp.Header.Get("Content-Encoding") != "identity" {
		resp.Body.Close()
		return opened{}, usageError{fmt.Errorf("--weights %s: the server sends it %s-encoded; give a URL of the file itself", s.shown, resp.Header.Get("Content-Encoding"))}
	}
	o.body = resp.Body
	o.meta.ETag = resp.Header.Get("ETag")
	o.meta.LastModified = resp.Header.Get("Last-Modified")
	o.meta.SHA256 = declaredSHA256(resp.Header, linked)
	if o.meta.Size < 0 && linked != nil {
		if n, err := strconv.ParseInt(linked.Get("X-Linked-Size"), 10, 64); err == nil {
			o.meta.Size = n
		}
	}
	return o, nil
}

// httpSourceError says what an HTTP status means for a --weights URL:
// 4xx is the URL's fault (exit status 2, like a missing file), 5xx the
// server's (resumed like a dropped connection).
func httpSourceError(shown string, status int) error {
	switch {
	case status == http.StatusNotFound || status == http.StatusGone:
		return usageError{fmt.Errorf("--weights %s: not found (HTTP %d)", shown, status)}
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return usageError{fmt.Errorf("--weights %s: access denied (HTTP %d): the URL needs credentials, or a signed URL has expired", shown, status)}
	case status >= 400 && status < 500:
		return usageError{fmt.Errorf("--weights %s: the server refused it (HTTP %d)", shown, status)}
	}
	return fmt.Errorf("the server answered HTTP %d", status)
}

// parseContentRange reads "bytes START-END/TOTAL"; total is -1 for "*".
func parseContentRange(v string) (start, total int64, ok bool) {
	v, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, false
	}
	a, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return start, total, true
}

// declaredSHA256 is the sha256 a response declares for the object:
// Repr-Digest (RFC 9530), Digest (RFC 3230), or the X-Linked-Etag of a
// Hugging Face redirect.
func declaredSHA256(h, linked http.Header) string {
	for _, v := range []string{h.Get("Repr-Digest"), h.Get("Digest")} {
		for _, part := range strings.Split(v, ",") {
			name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || !strings.EqualFold(name, "sha-256") {
				continue
			}
			b, err := base64.StdEncoding.DecodeString(strings.Trim(val, ":"))
			if err == nil && len(b) == sha256.Size {
				return hex.EncodeToString(b)
			}
		}
	}
	if linked != nil {
		if v := strings.ToLower(strings.Trim(linked.Get("X-Linked-Etag"), `"`)); hex64.MatchString(v) {
			return v
		}
	}
	return ""
}

// ---------------------------------------------------------------- s3

// s3Source is s3://bucket/key on AWS S3 or any S3-compatible store.
type s3Source struct {
	client      *minio.Client
	bucket, key string
	shown       string
}

// newS3Source parses s3://bucket/key and connects with the standard AWS
// settings: endpoint from --s3-endpoint, $AWS_ENDPOINT_URL_S3 or
// $AWS_ENDPOINT_URL (default AWS), keys from $AWS_ACCESS_KEY_ID and
// $AWS_SECRET_ACCESS_KEY (and $AWS_SESSION_TOKEN) or ~/.aws/credentials
// ($AWS_PROFILE), region from $AWS_REGION or $AWS_DEFAULT_REGION. With
// no keys the request is anonymous (a public bucket).
func newS3Source(raw, endpoint string) (s3Source, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || strings.Trim(u.Path, "/") == "" {
		return s3Source{}, usageError{fmt.Errorf("--weights %s: want s3://BUCKET/KEY", raw)}
	}
	s := s3Source{bucket: u.Host, key: strings.TrimPrefix(u.Path, "/"), shown: "s3://" + u.Host + u.Path}
	for _, e := range []string{endpoint, os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL")} {
		if e != "" {
			endpoint = e
			break
		}
	}
	secure := true
	switch {
	case endpoint == "":
		endpoint = "s3.amazonaws.com"
	case strings.Contains(endpoint, "://"):
		eu, err := url.Parse(endpoint)
		if err != nil || eu.Host == "" {
			return s3Source{}, usageError{fmt.Errorf("S3 endpoint %q: want host:port or a URL such as http://127.0.0.1:9000", endpoint)}
		}
		endpoint, secure = eu.Host, eu.Scheme == "https"
	}
	region := os.Getenv("AWS_REGION")
	if region == "" {
		region = os.Getenv("AWS_DEFAULT_REGION")
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
	})
	s.client, err = minio.New(endpoint, &minio.Options{Creds: creds, Secure: secure, Region: region})
	if err != nil {
		return s3Source{}, usageError{fmt.Errorf("S3 endpoint %q: %w", endpoint, err)}
	}
	return s, nil
}

func (s s3Source) open(ctx context.Context, off int64, prev downloadMeta) (opened, error) {
	st, err := s.client.StatObject(ctx, s.bucket, s.key, minio.StatObjectOptions{})
	if err != nil {
		return opened{}, s.err(err)
	}
	o := opened{meta: downloadMeta{ETag: st.ETag, Size: st.Size}}
	if !st.LastModified.IsZero() {
		o.meta.LastModified = st.LastModified.UTC().Format(http.TimeFormat)
	}
	// A plain upload's ETag is its MD5; not a multipart one's (MD5-N) nor
	// one encrypted with KMS or a customer key.
	if hexMD5.MatchString(st.ETag) && st.Metadata.Get("X-Amz-Server-Side-Encryption") != "aws:kms" &&
		st.Metadata.Get("X-Amz-Server-Side-Encryption-Customer-Algorithm") == "" {
		o.meta.MD5 = st.ETag
	}
	opts := minio.GetObjectOptions{}
	// If-Match: an object replaced between the stat and this read fails
	// the read (and the retry starts again) rather than mix two objects.
	if err := opts.SetMatchETag(st.ETag); err != nil {
		return opened{}, err
	}
	if off > 0 && prev.ETag == st.ETag && off < st.Size {
		if err := opts.SetRange(off, 0); err != nil {
			return opened{}, err
		}
		o.start = off
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.key, opts)
	if err != nil {
		return opened{}, s.err(err)
	}
	o.body = obj
	return o, nil
}

var hexMD5 = regexp.MustCompile(`^[0-9a-f]{32}$`)

// err turns the store's refusals into clear usage errors (exit status 2).
func (s s3Source) err(err error) error {
	e := minio.ToErrorResponse(err)
	switch {
	case e.Code == "NoSuchKey" || e.Code == "NoSuchBucket" || e.StatusCode == http.StatusNotFound:
		return usageError{fmt.Errorf("--weights %s: not found (%s)", s.shown, orText(e.Code, "HTTP 404"))}
	case e.Code == "AccessDenied" || e.Code == "InvalidAccessKeyId" || e.Code == "SignatureDoesNotMatch" || e.StatusCode == http.StatusForbidden:
		return usageError{fmt.Errorf("--weights %s: access denied (%s): check $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY and the endpoint", s.shown, orText(e.Code, "HTTP 403"))}
	}
	return err
}

func orText(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// fetchWeights downloads a --weights URL for deploy, with a progress bar
// on a terminal and a line on stderr when it starts, resumes or restarts
// (neither with --json).
func fetchWeights(ctx context.Context, c *client, raw, s3Endpoint string, quiet bool) (string, string, error) {
	dir, err := downloadsDir()
	if err != nil {
		return "", "", err
	}
	d := &downloader{dir: dir, retries: 3, retryWait: time.Second}
	d.held = func(ctx context.Context, sha string) (bool, error) {
		_, held, err := heldArtifact(ctx, c, sha)
		return held, err
	}
	if !quiet {
		d.notes = os.Stderr
		if term.IsTerminal(int(os.Stderr.Fd())) {
			// The upload's bar (progressbar.DefaultBytes), which a
			// download of unknown size shows as a spinner.
			d.bar = func(size int64, desc string) *progressbar.ProgressBar { return progressbar.DefaultBytes(size, desc) }
		}
	}
	var s source
	if strings.HasPrefix(strings.ToLower(raw), "s3://") {
		if s, err = newS3Source(raw, s3Endpoint); err != nil {
			return "", "", err
		}
	} else {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return "", "", usageError{fmt.Errorf("--weights: %q is not a URL", cacheKeyShown(raw))}
		}
		_, shown := cacheKey(raw)
		// No overall timeout (a large file takes as long as it takes);
		// a server that stops answering is caught by the header timeout.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = time.Minute
		s = httpSource{url: raw, shown: shown, client: &http.Client{Transport: t}}
	}
	return d.fetch(ctx, raw, s)
}

// cacheKeyShown is a URL without its query and credentials, for messages.
func cacheKeyShown(raw string) string {
	_, shown := cacheKey(raw)
	return shown
}
