package azure

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
)

// TestWaitCopy covers the copy states Azurite never shows (its copies
// within an account finish before Start Copy returns): pending, then
// success or failure, a poll error, and the context ending while pending.
func TestWaitCopy(t *testing.T) {
	type answer struct {
		status blob.CopyStatusType
		desc   string
		err    error
	}
	pollErr := errors.New("network down")
	for _, tc := range []struct {
		name    string
		first   blob.CopyStatusType
		answers []answer
		timeout time.Duration
		want    error
		polls   int
	}{
		{"done at start", blob.CopyStatusTypeSuccess, nil, 0, nil, 0},
		{"pending then success", blob.CopyStatusTypePending, []answer{{blob.CopyStatusTypePending, "", nil}, {blob.CopyStatusTypeSuccess, "", nil}}, 0, nil, 2},
		{"no status then success", "", []answer{{blob.CopyStatusTypeSuccess, "", nil}}, 0, nil, 1},
		{"failed", blob.CopyStatusTypePending, []answer{{blob.CopyStatusTypeFailed, "500 InternalError sig=SECRET", nil}}, 0, ErrCopyFailed, 1},
		{"aborted", blob.CopyStatusTypeAborted, nil, 0, ErrCopyFailed, 0},
		{"poll error", blob.CopyStatusTypePending, []answer{{"", "", pollErr}}, 0, pollErr, 1},
		{"context ends", blob.CopyStatusTypePending, []answer{{blob.CopyStatusTypePending, "", nil}, {blob.CopyStatusTypePending, "", nil}, {blob.CopyStatusTypePending, "", nil}}, 250 * time.Millisecond, context.DeadlineExceeded, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			polls := 0
			err := waitCopy(ctx, tc.first, "", func(context.Context) (blob.CopyStatusType, string, error) {
				a := tc.answers[min(polls, len(tc.answers)-1)]
				polls++
				return a.status, a.desc, a.err
			})
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("waitCopy: %v, want %v", err, tc.want)
			}
			if polls < tc.polls || tc.timeout == 0 && polls != tc.polls {
				t.Fatalf("polled %d times, want %d", polls, tc.polls)
			}
			if err != nil && strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("error shows a signature: %v", err)
			}
		})
	}
}

func TestCloneBlobName(t *testing.T) {
	tg := &Target{loc: Location{Prefix: "lb/"}}
	for _, tc := range []struct{ in, want string }{
		{"vm1", "lb/failover/vm1.vhd"},
		{"vm1.vhd", "lb/failover/vm1.vhd"},
		{"VM_1-disk.0", "lb/failover/VM_1-disk.0.vhd"},
		{"", ""}, {".vhd", ""}, {".hidden", ""}, {"-x", ""}, {"a/b", ""}, {"a b", ""}, {"é", ""}, {strings.Repeat("a", 201), ""},
	} {
		got, err := tg.cloneBlob(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("cloneBlob(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
