package controlplane

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const gb = int64(1) << 30

// h200 is a fake GPU (no GPU on the build machine): the placement tests'
// inventory is made up, as the issue allows.
func h200(i int, used int64) GPU {
	return GPU{Index: i, UUID: "GPU-" + string(rune('a'+i)), Name: "NVIDIA H200", TotalBytes: 141 * gb, UsedBytes: used}
}

func TestPlaceGPUs(t *testing.T) {
	small := 4 * gb // a ~1B F16 runner with its KV
	big := 100 * gb // more than half an H200
	tests := []struct {
		name   string
		gpus   []GPU
		claims []GPUClaim
		want   int
		need   int64
		got    []int // GPU indices
		err    string
	}{
		{"CPU runner on any host", nil, nil, 0, small, nil, ""},
		{"no GPU, one asked", nil, nil, 1, small, nil, "too few"},
		{"one GPU, two asked", []GPU{h200(0, 0)}, nil, 2, small, nil, "too few"},
		{"one GPU, room", []GPU{h200(0, 0)}, nil, 1, small, []int{0}, ""},
		{"one GPU, another process fills it", []GPU{h200(0, 139*gb)}, nil, 1, small, nil, "no capacity"},
		{"packs a second small runner onto the used GPU", []GPU{h200(0, 0), h200(1, 0)},
			[]GPUClaim{{Runner: "a", UUIDs: []string{"GPU-a"}, Bytes: small}}, 1, small, []int{0}, ""},
		{"a big one takes the empty GPU", []GPU{h200(0, 0), h200(1, 0)},
			[]GPUClaim{{Runner: "a", UUIDs: []string{"GPU-a"}, Bytes: 50 * gb}}, 1, big, []int{1}, ""},
		{"claims still loading count although nvidia-smi shows nothing yet", []GPU{h200(0, 1*gb)},
			[]GPUClaim{{Runner: "a", UUIDs: []string{"GPU-a"}, Bytes: big}}, 1, big, nil, "no capacity"},
		{"a loaded runner is not counted twice", []GPU{h200(0, 50*gb)},
			[]GPUClaim{{Runner: "a", UUIDs: []string{"GPU-a"}, Bytes: 50 * gb}}, 1, 80 * gb, []int{0}, ""},
		{"full: both GPUs claimed", []GPU{h200(0, 0), h200(1, 0)},
			[]GPUClaim{{Runner: "a", UUIDs: []string{"GPU-a"}, Bytes: big}, {Runner: "b", UUIDs: []string{"GPU-b"}, Bytes: big}}, 1, big, nil, "no capacity"},
		{"two GPUs for one runner split its need", []GPU{h200(0, 0), h200(1, 0)}, nil, 2, 200 * gb, []int{0, 1}, ""},
		{"two asked, one has room", []GPU{h200(0, 0), h200(1, 100*gb)}, nil, 2, 200 * gb, nil, "no capacity"},
		{"best fit: the fuller of two with room", []GPU{h200(0, 10*gb), h200(1, 60*gb)}, nil, 1, small, []int{1}, ""},
		{"equal: the lower index", []GPU{h200(0, 0), h200(1, 0)}, nil, 1, small, []int{0}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlaceGPUs(tt.gpus, tt.claims, tt.want, tt.need)
			var nc *NoCapacityError
			var few *TooFewGPUsError
			switch tt.err {
			case "":
				if err != nil {
					t.Fatal(err)
				}
			case "no capacity":
				if !errors.As(err, &nc) || !IsNoCapacity(err) {
					t.Fatalf("err %v, want a NoCapacityError", err)
				}
				if !strings.Contains(err.Error(), "waiting for a GPU") {
					t.Errorf("unclear: %v", err)
				}
			case "too few":
				if !errors.As(err, &few) || IsNoCapacity(err) {
					t.Fatalf("err %v, want a TooFewGPUsError", err)
				}
			}
			var idx []int
			for _, g := range got {
				idx = append(idx, g.Index)
			}
			if !slices.Equal(idx, tt.got) {
				t.Errorf("placed on %v, want %v", idx, tt.got)
			}
		})
	}
}

func TestParseNvidiaSMI(t *testing.T) {
	out := "0, GPU-1c2d3e4f-aaaa-bbbb-cccc-0123456789ab, NVIDIA H200, 143771, 512\n1, GPU-ffff, NVIDIA H200, 143771, 0\n"
	gpus, err := parseNvidiaSMI(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []GPU{
		{Index: 0, UUID: "GPU-1c2d3e4f-aaaa-bbbb-cccc-0123456789ab", Name: "NVIDIA H200", TotalBytes: 143771 << 20, UsedBytes: 512 << 20},
		{Index: 1, UUID: "GPU-ffff", Name: "NVIDIA H200", TotalBytes: 143771 << 20},
	}
	if !slices.Equal(gpus, want) {
		t.Errorf("got %+v, want %+v", gpus, want)
	}
	if gpus, err := parseNvidiaSMI(""); err != nil || len(gpus) != 0 {
		t.Errorf("no GPUs: %v %v", gpus, err)
	}
	if _, err := parseNvidiaSMI("0, GPU-x, H200, [N/A], 0"); err == nil {
		t.Error("a malformed line was accepted")
	}
	if VisibleDevices(want) != "GPU-1c2d3e4f-aaaa-bbbb-cccc-0123456789ab,GPU-ffff" || VisibleDevices(nil) != "" {
		t.Errorf("VisibleDevices: %q", VisibleDevices(want))
	}
}

// TestNvidiaSMIAbsent: a host without nvidia-smi has no GPUs, which is
// not an error; one whose nvidia-smi fails is.
func TestNvidiaSMIAbsent(t *testing.T) {
	gpus, err := NvidiaSMI{Path: "nvidia-smi-not-installed-here"}.GPUs(context.Background())
	if err != nil || len(gpus) != 0 {
		t.Errorf("absent nvidia-smi: %v, %v", gpus, err)
	}
	if _, err := (NvidiaSMI{Path: "/bin/false"}).GPUs(context.Background()); err == nil {
		t.Error("a failing nvidia-smi was taken for no GPUs")
	}
}

// fakeInventory stands for nvidia-smi: the build machine has no GPU.
type fakeInventory []GPU

func (f fakeInventory) GPUs(context.Context) ([]GPU, error) { return f, nil }

// TestLocalDriverPlacesOnGPUs starts real processes (a shell script in the
// runner's place that records its CUDA_VISIBLE_DEVICES) on a fake
// inventory of one GPU: two small runners share it, a third waits with a
// NoCapacityError, one asking for two GPUs is refused, CPU runners see no
// GPU, and a stopped runner's memory goes back.
func TestLocalDriverPlacesOnGPUs(t *testing.T) {
	dir := t.TempDir()
	// The runner's arguments follow the script: $6 is --id's value.
	script := `echo "${CUDA_VISIBLE_DEVICES-unset}" > "` + dir + `/$6"; exec sleep 60`
	var waited []error
	d := &LocalDriver{
		Command: []string{"/bin/sh", "-c", script, "sh"},
		GPUs:    fakeInventory{{Index: 0, UUID: "GPU-a", Name: "fake", TotalBytes: 20 * gb}},
		Waiting: func(_ RunnerSpec, err error) { waited = append(waited, err) },
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	spec := func(id string, gpus int, size int64) RunnerSpec {
		s := RunnerSpec{ID: id, DeploymentID: "d" + id, Deployment: "d" + id, Artifact: "x", Size: size, Parallel: 1}
		s.Resources.GPUs = gpus
		return s
	}
	ctx := context.Background()
	// Each ~1B runner plans 2.1 GB + 1/8 + 1 GiB ≈ 3.4 GiB: five fit 20 GiB.
	for _, id := range []string{"a", "b"} {
		if err := d.Start(ctx, spec(id, 1, 2_100_000_000)); err != nil {
			t.Fatal(err)
		}
	}
	err := d.Start(ctx, spec("big", 1, 16_000_000_000))
	if !IsNoCapacity(err) || len(waited) != 1 || !IsNoCapacity(waited[0]) {
		t.Fatalf("an 8B runner on a GPU two 1B runners use: err %v, waiting heard %v", err, waited)
	}
	var few *TooFewGPUsError
	if err := d.Start(ctx, spec("two", 2, 1)); !errors.As(err, &few) {
		t.Fatalf("two GPUs asked of one: %v", err)
	}
	if err := d.Start(ctx, spec("cpu", 0, 1)); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"a": "GPU-a", "b": "GPU-a", "cpu": ""} {
		if got := readEventually(t, filepath.Join(dir, id)); got != want {
			t.Errorf("runner %s: CUDA_VISIBLE_DEVICES=%q, want %q", id, got, want)
		}
	}
	// Stopping both small runners frees room for the big one.
	d.Kill(ctx, "a")
	d.Kill(ctx, "b")
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := d.Start(ctx, spec("big", 1, 16_000_000_000))
		if err == nil {
			break
		}
		if !IsNoCapacity(err) || time.Now().After(deadline) {
			t.Fatalf("after the small runners exited: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := readEventually(t, filepath.Join(dir, "big")); got != "GPU-a" {
		t.Errorf("big runner: CUDA_VISIBLE_DEVICES=%q", got)
	}
}

func readEventually(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not written: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
