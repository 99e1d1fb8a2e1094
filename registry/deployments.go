package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/infer-run/infer/internal/chat"
	ggufinfo "github.com/infer-run/infer/internal/gguf"
)

// Deployment is a named, callable model: an artifact plus how to serve it.
// Its name is what clients send as the OpenAI "model" field.
type Deployment struct {
	ID             string `json:"id"`
	TenantID       string `json:"tenant_id"`
	Name           string `json:"name"`
	ArtifactSHA256 string `json:"artifact_sha256"`
	// MinRunners are kept running even without work; 0 scales to zero.
	MinRunners int `json:"min_runners"`
	// MaxRunners bounds scale-out.
	MaxRunners int `json:"max_runners"`
	// Parallel is how many requests one runner decodes together.
	Parallel int `json:"parallel"`
	// ContextLength is tokens per request; 0 uses the model's default.
	ContextLength int `json:"context_length"`
	// IdleTimeout is how long a runner may sit without requests before it
	// is stopped. Stored with millisecond precision.
	IdleTimeout time.Duration `json:"idle_timeout"`
	// KeepWarm keeps the deployment's last runner for this long after
	// its last request even when IdleTimeout would stop it sooner, so a
	// burst after a pause finds it warm; 0 leaves it to IdleTimeout. It
	// only ever holds a runner that exists: it starts none. Stored with
	// millisecond precision.
	KeepWarm time.Duration `json:"keep_warm"`
	// QueueLimit bounds requests waiting or running; more are refused.
	QueueLimit int `json:"queue_limit"`
	// QueueTimeout fails a request that waited this long without starting.
	// Stored with millisecond precision.
	QueueTimeout time.Duration `json:"queue_timeout"`
	// ChatTemplate overrides the template the weights bring (chat.Names);
	// empty means the weights' own.
	ChatTemplate string `json:"chat_template"`
	// Template is the template in use, read-only: ChatTemplate, else the
	// artifact's (Artifact.ChatTemplate), else "" when the artifact
	// predates recording it.
	Template string `json:"template"`
	// EmbeddingOnly says the artifact's model makes embeddings and no
	// text (gguf.EmbeddingOnly of its architecture and pooling), read-only:
	// chat and completions on it are refused before a runner starts.
	EmbeddingOnly bool `json:"embedding_only,omitempty"`
	// Prices is what a request and a runner's lifetime cost.
	Prices Prices `json:"prices"`
	// Resources is what one runner is given where a driver places runners.
	Resources Resources `json:"resources"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Prices are in US dollars. Usage records carry the cost at the prices in
// force when the request ran, so changing a price never rewrites history.
type Prices struct {
	PromptPerMTok     float64 `json:"prompt_per_mtok"`     // per 1M prompt tokens
	CompletionPerMTok float64 `json:"completion_per_mtok"` // per 1M completion tokens
	RunnerSecond      float64 `json:"runner_second"`       // per second a runner exists
}

// Resources is a runner's placement. The local driver ignores it; the
// Kubernetes driver turns it into the pod's requests, limits and node
// selector.
type Resources struct {
	// CPU and Memory are Kubernetes quantities ("4", "500m", "16Gi");
	// empty leaves them unset.
	CPU    string `json:"cpu"`
	Memory string `json:"memory"`
	// GPUs per runner; 0 runs on the CPU.
	GPUs int `json:"gpus"`
	// NodeSelector restricts runners to nodes with these labels.
	NodeSelector map[string]string `json:"node_selector"`
}

// DefaultDeployment returns a deployment with the default settings (the
// same as the database column defaults) and no name, tenant or artifact.
func DefaultDeployment() Deployment {
	return Deployment{
		MinRunners:   0,
		MaxRunners:   1,
		Parallel:     4,
		IdleTimeout:  5 * time.Minute,
		QueueLimit:   1000,
		QueueTimeout: 5 * time.Minute,
	}
}

// Bounds on deployment settings. They catch typos and values no runner can
// honour; they are not capacity planning.
const (
	maxRunnersLimit    = 1000
	maxParallel        = 256
	maxContextLength   = 1 << 20
	maxQueueLimit      = 1_000_000
	minTimeout         = time.Second
	maxQueueTimeout    = 24 * time.Hour
	maxIdleTimeout     = 30 * 24 * time.Hour
	maxKeepWarm        = 30 * 24 * time.Hour
	maxDeploymentNameN = 63
)

// ValidName checks a deployment name: 1 to 63 lowercase letters, digits,
// '-' and '_', starting and ending with a letter or digit. Names are the
// OpenAI "model" field and appear in pod names and labels, log file names
// and metrics labels, which rules out dots, wildcards and spaces. (Queues
// and subjects use the deployment's ID, not its name.)
func ValidName(name string) error {
	if name == "" {
		return errors.New("deployment name is empty")
	}
	if len(name) > maxDeploymentNameN {
		return fmt.Errorf("deployment name %q is %d characters; at most %d are allowed", name, len(name), maxDeploymentNameN)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' || c == '_':
			if i == 0 || i == len(name)-1 {
				return fmt.Errorf("deployment name %q must start and end with a lowercase letter or digit", name)
			}
		default:
			return fmt.Errorf("deployment name %q contains %q; use only lowercase letters, digits, '-' and '_'", name, rune(c))
		}
	}
	return nil
}

// FieldError is a deployment that Validate refused, naming the field at
// fault, so the API can report it as the error's param.
type FieldError struct {
	Field string // as in the API, e.g. "queue_timeout" or "resources.cpu"
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldError(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Validate checks that the deployment can be stored and served.
func (d Deployment) Validate() error {
	if err := ValidName(d.Name); err != nil {
		return &FieldError{Field: "name", Err: err}
	}
	if d.ArtifactSHA256 == "" {
		return fieldError("artifact", "artifact is required (the sha256 of uploaded weights)")
	}
	if err := validSHA256(d.ArtifactSHA256); err != nil {
		return &FieldError{Field: "artifact", Err: err}
	}
	switch {
	case d.MinRunners < 0 || d.MinRunners > maxRunnersLimit:
		return fieldError("min_runners", "min_runners is %d; it must be between 0 and %d", d.MinRunners, maxRunnersLimit)
	case d.MaxRunners < 1 || d.MaxRunners > maxRunnersLimit:
		return fieldError("max_runners", "max_runners is %d; it must be between 1 and %d", d.MaxRunners, maxRunnersLimit)
	case d.MinRunners > d.MaxRunners:
		return fieldError("min_runners", "min_runners (%d) is more than max_runners (%d)", d.MinRunners, d.MaxRunners)
	case d.Parallel < 1 || d.Parallel > maxParallel:
		return fieldError("parallel", "parallel is %d; it must be between 1 and %d", d.Parallel, maxParallel)
	case d.ContextLength < 0 || d.ContextLength > maxContextLength:
		return fieldError("context_length", "context_length is %d; it must be between 0 (the model's default) and %d", d.ContextLength, maxContextLength)
	case d.IdleTimeout < minTimeout || d.IdleTimeout > maxIdleTimeout:
		return fieldError("idle_timeout", "idle_timeout is %v; it must be between %v and %v", d.IdleTimeout, minTimeout, maxIdleTimeout)
	case d.KeepWarm < 0 || d.KeepWarm > maxKeepWarm:
		return fieldError("keep_warm", "keep_warm is %v; it must be between 0 (off) and %v", d.KeepWarm, maxKeepWarm)
	case d.QueueLimit < 1 || d.QueueLimit > maxQueueLimit:
		return fieldError("queue_limit", "queue_limit is %d; it must be between 1 and %d", d.QueueLimit, maxQueueLimit)
	case d.QueueTimeout < minTimeout || d.QueueTimeout > maxQueueTimeout:
		return fieldError("queue_timeout", "queue_timeout is %v; it must be between %v and %v", d.QueueTimeout, minTimeout, maxQueueTimeout)
	}
	if err := chat.Validate(d.ChatTemplate); err != nil {
		return fieldError("chat_template", "%v", err)
	}
	if err := d.Prices.validate(); err != nil {
		return err
	}
	return d.Resources.validate()
}

// maxPrice bounds each price; it catches a price typed in cents or
// micro-dollars by mistake and keeps sums far from numeric's limits.
const maxPrice = 1_000_000

func (p Prices) validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"prices.prompt_per_mtok", p.PromptPerMTok},
		{"prices.completion_per_mtok", p.CompletionPerMTok},
		{"prices.runner_second", p.RunnerSecond},
	} {
		// The negated comparison also refuses NaN.
		if !(f.v >= 0 && f.v <= maxPrice) {
			return fieldError(f.name, "%s is %v; it must be between 0 and %d US dollars", f.name, f.v, maxPrice)
		}
	}
	return nil
}

// FitsArtifact checks the deployment against the weights it serves: a
// context_length beyond what the model was trained on would be accepted by
// llama.cpp and produce garbage past the trained length, so it is refused.
// (An artifact whose file does not say is not checked.)
func (d Deployment) FitsArtifact(a Artifact) error {
	if a.ContextLength > 0 && d.ContextLength > a.ContextLength {
		return fieldError("context_length", "context_length is %d, but the model (artifact %.12s) was trained on %d tokens; use at most %d, or 0 for the default (the trained length, at most 4096)",
			d.ContextLength, a.SHA256, a.ContextLength, a.ContextLength)
	}
	return nil
}

const maxGPUs = 64

func (r Resources) validate() error {
	for _, q := range []struct{ name, v string }{{"resources.cpu", r.CPU}, {"resources.memory", r.Memory}} {
		if q.v == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.v)
		if err != nil {
			return fieldError(q.name, "%s %q is not a quantity such as \"4\", \"500m\" or \"16Gi\"", q.name, q.v)
		}
		if v.Sign() <= 0 {
			return fieldError(q.name, "%s %q must be more than zero", q.name, q.v)
		}
	}
	if r.GPUs < 0 || r.GPUs > maxGPUs {
		return fieldError("resources.gpus", "resources.gpus is %d; it must be between 0 and %d", r.GPUs, maxGPUs)
	}
	for k, v := range r.NodeSelector {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fieldError("resources.node_selector", "resources.node_selector key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fieldError("resources.node_selector", "resources.node_selector value %q: %s", v, strings.Join(errs, "; "))
		}
	}
	return nil
}

const deploymentColumns = `id, tenant_id, name, artifact_sha256, min_runners, max_runners, parallel,
	context_length, idle_timeout_ms, queue_limit, queue_timeout_ms, chat_template,
	price_prompt_per_mtok, price_completion_per_mtok, price_runner_second,
	cpu, memory, gpus, node_selector, keep_warm_ms, created_at, updated_at,
	(SELECT ARRAY[a.chat_template, a.architecture, a.pooling] FROM artifacts a WHERE a.sha256 = artifact_sha256)`

// NewDeploymentID returns a fresh deployment ID: "dep_" and 26 lower-case
// base32 characters (128 random bits), never reused, and safe as a NATS
// subject token and stream-name suffix (see wire.ValidKey).
func NewDeploymentID() string { return newID("dep") }

func scanDeployment(row pgx.Row) (Deployment, error) {
	var (
		d                       Deployment
		idleMS, queueMS, warmMS int64
		weights                 []string // the artifact's chat template, architecture, pooling
	)
	err := row.Scan(&d.ID, &d.TenantID, &d.Name, &d.ArtifactSHA256, &d.MinRunners, &d.MaxRunners, &d.Parallel,
		&d.ContextLength, &idleMS, &d.QueueLimit, &queueMS, &d.ChatTemplate,
		&d.Prices.PromptPerMTok, &d.Prices.CompletionPerMTok, &d.Prices.RunnerSecond,
		&d.Resources.CPU, &d.Resources.Memory, &d.Resources.GPUs, &d.Resources.NodeSelector,
		&warmMS, &d.CreatedAt, &d.UpdatedAt, &weights)
	if len(weights) == 3 {
		d.Template = weights[0]
		d.EmbeddingOnly = ggufinfo.EmbeddingOnly(weights[1], weights[2])
	}
	d.Template = cmp.Or(d.ChatTemplate, d.Template)
	d.IdleTimeout = time.Duration(idleMS) * time.Millisecond
	d.KeepWarm = time.Duration(warmMS) * time.Millisecond
	d.QueueTimeout = time.Duration(queueMS) * time.Millisecond
	return d, err
}

// PutDeployment creates the deployment d.Name for d.TenantID or replaces its
// settings. Names are per tenant: another tenant's deployment of the same
// name is neither touched nor revealed. An artifact that was never uploaded
// is ErrNotFound. A replaced deployment keeps its ID; a created one gets
// d.ID if set (from NewDeploymentID: its queue may be made first), else a
// new one. Timestamps are assigned here.
func (s *Store) PutDeployment(ctx context.Context, d Deployment) (Deployment, error) {
	if err := d.Validate(); err != nil {
		return Deployment{}, fmt.Errorf("invalid deployment: %w", err)
	}
	if d.TenantID == "" {
		return Deployment{}, errors.New("invalid deployment: no tenant")
	}
	stored, err := scanDeployment(s.pool.QueryRow(ctx, putDeploymentSQL, putDeploymentArgs(d)...))
	switch {
	case pgCode(err) == codeForeignKey:
		// Either the artifact or the tenant is missing; the artifact is
		// the one a user can get wrong.
		return Deployment{}, fmt.Errorf("saving deployment %q: artifact %s or tenant %s: %w", d.Name, d.ArtifactSHA256, d.TenantID, ErrNotFound)
	case err != nil:
		return Deployment{}, fmt.Errorf("saving deployment %q: %w", d.Name, err)
	}
	return stored, nil
}

// putDeploymentSQL inserts a deployment or replaces the one of its
// tenant and name; its arguments are putDeploymentArgs.
const putDeploymentSQL = `
	INSERT INTO deployments (id, tenant_id, name, artifact_sha256, min_runners, max_runners, parallel,
		context_length, idle_timeout_ms, queue_limit, queue_timeout_ms, chat_template,
		price_prompt_per_mtok, price_completion_per_mtok, price_runner_second,
		cpu, memory, gpus, node_selector, keep_warm_ms)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
	ON CONFLICT (tenant_id, name) DO UPDATE SET
		artifact_sha256 = excluded.artifact_sha256,
		min_runners = excluded.min_runners,
		max_runners = excluded.max_runners,
		parallel = excluded.parallel,
		context_length = excluded.context_length,
		idle_timeout_ms = excluded.idle_timeout_ms,
		queue_limit = excluded.queue_limit,
		queue_timeout_ms = excluded.queue_timeout_ms,
		chat_template = excluded.chat_template,
		price_prompt_per_mtok = excluded.price_prompt_per_mtok,
		price_completion_per_mtok = excluded.price_completion_per_mtok,
		price_runner_second = excluded.price_runner_second,
		cpu = excluded.cpu,
		memory = excluded.memory,
		gpus = excluded.gpus,
		node_selector = excluded.node_selector,
		keep_warm_ms = excluded.keep_warm_ms,
		updated_at = now()
	RETURNING ` + deploymentColumns

// putDeploymentArgs are putDeploymentSQL's arguments for d (a new ID when
// d has none).
func putDeploymentArgs(d Deployment) []any {
	nodeSelector := d.Resources.NodeSelector
	if nodeSelector == nil {
		nodeSelector = map[string]string{} // the column is NOT NULL
	}
	id := d.ID
	if id == "" {
		id = NewDeploymentID()
	}
	return []any{id, d.TenantID, d.Name, d.ArtifactSHA256, d.MinRunners, d.MaxRunners, d.Parallel,
		d.ContextLength, d.IdleTimeout.Milliseconds(), d.QueueLimit, d.QueueTimeout.Milliseconds(), d.ChatTemplate,
		d.Prices.PromptPerMTok, d.Prices.CompletionPerMTok, d.Prices.RunnerSecond,
		d.Resources.CPU, d.Resources.Memory, d.Resources.GPUs, nodeSelector, d.KeepWarm.Milliseconds()}
}

// GetDeployment returns the tenant's deployment called name. Another
// tenant's deployment of that name is ErrNotFound, like a free name.
func (s *Store) GetDeployment(ctx context.Context, tenantID, name string) (Deployment, error) {
	d, err := scanDeployment(s.pool.QueryRow(ctx, `SELECT `+deploymentColumns+` FROM deployments
		WHERE tenant_id = $1 AND name = $2`, tenantID, name))
	if err != nil {
		return Deployment{}, notFound(err, "deployment "+name)
	}
	return d, nil
}

// ListDeployments returns the tenant's deployments by name, or every
// tenant's when tenantID is empty (for the control plane).
func (s *Store) ListDeployments(ctx context.Context, tenantID string) ([]Deployment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deploymentColumns+` FROM deployments
		WHERE $1::text = '' OR tenant_id = $1 ORDER BY name`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("listing deployments: %w", err)
	}
	deps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Deployment, error) { return scanDeployment(r) })
	if err != nil {
		return nil, fmt.Errorf("listing deployments: %w", err)
	}
	return deps, nil
}

// DeleteDeployment deletes the tenant's deployment. Its usage records stay.
// A deployment that does not exist or belongs to another tenant is
// ErrNotFound.
func (s *Store) DeleteDeployment(ctx context.Context, tenantID, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM deployments WHERE tenant_id = $1 AND name = $2`, tenantID, name)
	if err != nil {
		return fmt.Errorf("deleting deployment %q: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("deployment %s: %w", name, ErrNotFound)
	}
	return nil
}
