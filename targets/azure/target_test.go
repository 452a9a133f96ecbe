package azure_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
	"lifeboat/targets/targettest"
)

var containerN atomic.Int64

// lastName is the container newContainer made last (for TestEncryption,
// which is not parallel).
var lastName string

// newContainer creates a fresh container on s.
func newContainer(t *testing.T, s *azuritetest.Server) string {
	t.Helper()
	name := fmt.Sprintf("lifeboat-%d", containerN.Add(1))
	s.NewContainer(t, name)
	lastName = name
	return name
}

func creds(s *azuritetest.Server) azure.Credentials {
	return azure.Credentials{Account: s.Account, Key: s.Key, Endpoint: s.URL + "/"}
}

// opener returns an open func for targettest: a fresh container per
// subtest, the same one for every call within it.
func opener(s *azuritetest.Server, opts azure.Options) func(t *testing.T) targets.Target {
	var mu sync.Mutex
	conts := map[*testing.T]string{}
	return func(t *testing.T) targets.Target {
		mu.Lock()
		name, ok := conts[t]
		mu.Unlock()
		if !ok {
			name = newContainer(t, s)
			mu.Lock()
			conts[t] = name
			mu.Unlock()
		}
		tg, err := azure.New(azure.Location{Account: s.Account, Container: name, Prefix: "lb/"}, creds(s), opts)
		if err != nil {
			t.Fatal(err)
		}
		return tg
	}
}

func TestConformance(t *testing.T) {
	s := azuritetest.Start(t)
	targettest.Run(t, opener(s, azure.Options{}))
}
