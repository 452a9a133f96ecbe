package azure_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// TestPointReaderCloseAndTimeout: a point reader's Close ends a read in
// flight (here one that retries against a stopped storage) and fails later
// reads with ErrClosed; Options.ReadTimeout bounds one read.
func TestPointReaderCloseAndTimeout(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	tg := newTarget(t, s, cont, azure.Options{})
	info := targets.VolumeInfo{ID: "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "pr", Size: 1 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	m := newModel(info.Size, 11)
	m.scatter(t, rep, 8)
	if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	pr, err := rep.OpenPoint(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, info.Size)
	if _, err := pr.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) || !bytes.Equal(got, m.data) {
		t.Fatalf("ReadAt before the outage: %v (or wrong bytes)", err)
	}
	// The same point through a target with a short read timeout.
	short := newTarget(t, s, cont, azure.Options{ReadTimeout: 700 * time.Millisecond})
	other, err := short.Open(ctx, targets.VolumeInfo{ID: "9b1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "o", Size: 1 << 20, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	timed, err := other.OpenPoint(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}

	restarted, err := s.StopFor(4 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := pr.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	pr.Close()
	select {
	case err := <-done:
		if !errors.Is(err, targets.ErrClosed) {
			t.Fatalf("ReadAt in flight when the reader closed: %v, want ErrClosed", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("ReadAt returned %v after the start, long after Close", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("ReadAt did not return after Close")
	}
	if _, err := pr.ReadAt(make([]byte, 512), 0); !errors.Is(err, targets.ErrClosed) {
		t.Fatalf("ReadAt after Close: %v, want ErrClosed", err)
	}

	start = time.Now()
	_, err = timed.ReadAt(make([]byte, 4096), 0)
	if d := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || d > 2*time.Second {
		t.Fatalf("ReadAt with a 700 ms timeout against a stopped storage: %v after %v, want a deadline error within 2 s", err, d)
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart azurite: %v", err)
	}
	if _, err := timed.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("ReadAt after the outage: %v", err)
	}
}
