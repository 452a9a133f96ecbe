package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// A scale-out process server registered with the configuration server
// keeps DATA-DIR/control.json and its client certificate beside its server
// certificate: DATA-DIR/pki/process-server.crt, for the key server.key.

const psRegistrationFile = "control.json"

type psRegistration struct {
	Name   string `json:"name"`
	Server string `json:"server"` // the configuration server
	URL    string `json:"url"`    // where agents reach this process server
}

func psClientCert(dataDir string) string {
	return filepath.Join(pki.Paths(dataDir).Dir, "process-server.crt")
}

func processServerRegisterCommand() *cli.Command {
	host, _ := os.Hostname()
	return &cli.Command{
		Name:  "register",
		Usage: "register this scale-out process server with the configuration server",
		Description: "An admin allows the process server on the site first ('lifeboat process-server allow NAME --host H --advertise URL'):\n" +
			"its certificate is trusted by every agent, so the passphrase alone is not enough, and it must register with exactly\n" +
			"the name, hosts and URL allowed.\n" +
			"Generates the process server's key (it never leaves this machine), proves the registration passphrase\n" +
			"and stores in DATA-DIR/pki the data port's certificate for --host, a client certificate for its heartbeats\n" +
			"and the site's CA. Started afterwards, 'lifeboat process-server --data-dir DIR' sends heartbeats (its load,\n" +
			"its spool, its volumes' points) and takes the site's revocation list with each answer; the configuration\n" +
			"server assigns new volumes to the least loaded process server and moves the volumes of one that stops.\n" +
			"Every process server must reach the same target (--target) as the site's.\n\n" +
			"Example:\n" +
			"   lifeboat process-server register --server https://dr.example:9440 --passphrase-file /root/lifeboat.pass \\\n" +
			"       --data-dir /var/lib/lifeboat/ps2 --host ps2.example --advertise https://ps2.example:9443",
		Flags: append(registrationFlags(),
			&cli.StringFlag{Name: "name", Value: host, Usage: "`NAME` of this process server on the site"},
			&cli.StringFlag{Name: "data-dir", Value: "/var/lib/lifeboat/process-server", Usage: "`DIR` of this process server (its certificates go to DIR/pki)"},
			&cli.StringSliceFlag{Name: "host", Required: true, Usage: "`NAME_OR_IP` agents reach this process server at, put in its certificate (repeatable)"},
			&cli.StringFlag{Name: "advertise", Required: true, Usage: "`URL` agents ship to, https://HOST:PORT (HOST one of --host)"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			server, pass, caPEM, err := registrationInputs(c)
			if err != nil {
				return err
			}
			name, dir := c.String("name"), c.String("data-dir")
			adv, err := url.Parse(c.String("advertise"))
			if err != nil || adv.Scheme != "https" || adv.Port() == "" {
				return usageError("--advertise %q: want https://HOST:PORT", c.String("advertise"))
			}
			p := pki.Paths(dir)
			if _, err := os.Stat(p.ServerKey); err == nil {
				return failure("%s exists: this data directory has an identity already; use another --data-dir", p.ServerKey)
			}
			reg := control.Registration{Name: name, Role: control.RegisterProcessServer, Hosts: c.StringSlice("host"), URL: c.String("advertise")}
			issued, err := control.Register(c.Context, server, reg, pass, caPEM)
			if err != nil {
				return failure("register %s at %s: %v", name, server, err)
			}
			id := pki.Identity{CertPEM: issued.ServerCertPEM, KeyPEM: issued.KeyPEM, CAPEM: issued.CAPEM}
			if err := id.Write(p.Dir, "server"); err != nil {
				return failure("%v", err)
			}
			if err := writeFileAtomic(psClientCert(dir), issued.CertPEM, 0o644); err != nil {
				return failure("%v", err)
			}
			b, _ := json.MarshalIndent(psRegistration{Name: name, Server: server, URL: "https://" + adv.Host}, "", "  ")
			if err := writeFileAtomic(filepath.Join(dir, psRegistrationFile), append(b, '\n'), 0o600); err != nil {
				return failure("%v", err)
			}
			fmt.Fprintf(c.App.Writer, "registered process server %s with %s; identity in %s\n", name, server, p.Dir)
			fmt.Fprintf(c.App.Writer, "next: lifeboat process-server --data-dir %s --listen :%s --target TARGET (the site's target)\n", dir, adv.Port())
			return nil
		},
	}
}

// writeFileAtomic replaces path with data durably: a temporary file,
// fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// startPSHeartbeats, for a process server that registered, sends its
// heartbeats until ctx is done and keeps DATA-DIR/pki/ca.crl the site's.
func startPSHeartbeats(ctx context.Context, dataDir string, srv *pipeline.Server, retention *psRetentions) (func(), error) {
	b, err := os.ReadFile(filepath.Join(dataDir, psRegistrationFile))
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil // not registered: a process server with a copy of the site's pki
	}
	if err != nil {
		return nil, failure("%v", err)
	}
	var reg psRegistration
	if err := json.Unmarshal(b, &reg); err != nil {
		return nil, failure("%s: %v", filepath.Join(dataDir, psRegistrationFile), err)
	}
	p := pki.Paths(dataDir)
	client, err := httpClient(psClientCert(dataDir), p.ServerKey, p.CACert)
	if err != nil {
		return nil, failure("%v", err)
	}
	log := slog.Default().With("process_server", reg.Name)
	vols := psVolumes(srv)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		interval, lastErr := control.DefaultHeartbeatInterval, ""
		for {
			hb := control.PSHeartbeat{URL: reg.URL}
			hb.Volumes, hb.SpoolBytes, hb.SpoolQuota = vols()
			var cfg control.PSConfig
			cctx, c2 := context.WithTimeout(ctx, 30*time.Second)
			err := control.Call(cctx, client, http.MethodPost, reg.Server+"/v1/process-server/heartbeat", hb, &cfg)
			c2()
			switch {
			case err != nil && ctx.Err() == nil:
				if err.Error() != lastErr {
					log.Warn("configuration server unreachable", "server", reg.Server, "err", err)
				}
				lastErr = err.Error()
			case err == nil:
				lastErr = ""
				if cfg.HeartbeatIntervalMS > 0 {
					interval = time.Duration(cfg.HeartbeatIntervalMS) * time.Millisecond
				}
				if err := retention.update(cfg.Retention); err != nil {
					log.Error("could not store the site's retention", "file", retention.path(), "err", err)
				}
				if err := syncCRL(p.CRL, cfg.CRLPEM); err != nil {
					log.Error("could not store the site's revocation list", "file", p.CRL, "err", err)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() { cancel(); <-done }, nil
}

// syncCRL replaces the local CRL when the site's differs.
func syncCRL(path string, crl []byte) error {
	if len(crl) == 0 {
		return nil
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, crl) {
		return nil
	}
	return writeFileAtomic(path, crl, 0o644)
}

// psRetentionFile keeps a registered process server's last retention
// answer, so that points are pruned by the site's policies from the start,
// before (and without) a heartbeat answer.
const psRetentionFile = "control-retention.json"

// psRetentions is the retention of each item as the site last gave it to a
// registered process server.
type psRetentions struct {
	dataDir    string
	registered bool                                       // DATA-DIR/control.json exists
	m          atomic.Pointer[map[string]control.Seconds] // nil until an answer is known
	saved      []byte                                     // what psRetentionFile holds
}

func (r *psRetentions) path() string { return filepath.Join(r.dataDir, psRetentionFile) }

// loadPSRetentions reads the last retention answer of a registered process
// server; a damaged file is ignored (the fallback keeps more points).
func loadPSRetentions(dataDir string) *psRetentions {
	r := &psRetentions{dataDir: dataDir}
	if _, err := os.Stat(filepath.Join(dataDir, psRegistrationFile)); err != nil {
		return r
	}
	r.registered = true
	b, err := os.ReadFile(r.path())
	if errors.Is(err, fs.ErrNotExist) {
		return r
	}
	var m map[string]control.Seconds
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil || m == nil {
		slog.Warn("the site's last retention answer is unreadable; keeping points up to the longest retention until the configuration server answers",
			"file", r.path(), "err", err)
		return r
	}
	r.m.Store(&m)
	r.saved = b
	return r
}

// update keeps the site's answer and writes it durably when it changed.
func (r *psRetentions) update(m map[string]control.Seconds) error {
	if m == nil {
		m = map[string]control.Seconds{}
	}
	r.m.Store(&m)
	b, err := json.Marshal(m)
	if err != nil || bytes.Equal(b, r.saved) {
		return err
	}
	if err := writeFileAtomic(r.path(), b, 0o600); err != nil {
		return err
	}
	r.saved = b
	return nil
}

// For is the retention of an item. A process server that is not registered
// has none (its --retention applies). A registered one that has never had
// an answer, or whose answer lacks the item, keeps points up to
// targets.MaxRetentionWindow: its --retention may be shorter than the
// item's policy, and a pruned point cannot come back.
func (r *psRetentions) For(machine, volume string) (targets.Retention, bool) {
	if !r.registered {
		return targets.Retention{}, false
	}
	if m := r.m.Load(); m != nil {
		if s := (*m)[machine+"/"+volume]; s > 0 {
			return targets.Retention{Window: s.Duration()}, true
		}
	}
	return targets.Retention{Window: targets.MaxRetentionWindow}, true
}

func processServerAllowCommand() *cli.Command {
	return &cli.Command{
		Name:  "allow",
		Usage: "on the site: allow a scale-out process server to register, with the host names its certificate will carry",
		Description: "A process server's certificate is trusted by every agent, so the registration passphrase alone (which\n" +
			"every machine gets) does not give one: an admin allows the name, its hosts and its URL first, and the\n" +
			"process server registers with exactly those ('lifeboat process-server register').\n\n" +
			"Example:\n" +
			"   lifeboat process-server allow ps2 --host ps2.example --advertise https://ps2.example:9443 --data-dir /var/lib/lifeboat/server",
		ArgsUsage: "NAME",
		Flags: append(siteFlags(),
			&cli.StringSliceFlag{Name: "host", Required: true, Usage: "`NAME_OR_IP` agents reach it at (repeatable; one must be --advertise's host)"},
			&cli.StringFlag{Name: "advertise", Required: true, Usage: "`URL` agents ship to, https://HOST:PORT"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			args, err := leafArgs(c, 1, "the process server's name")
			if err != nil {
				return err
			}
			var ps control.ProcessServer
			req := control.AllowRequest{Name: args[0], Hosts: c.StringSlice("host"), URL: c.String("advertise")}
			if err := siteCall(c, http.MethodPost, "/process-servers", req, &ps); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "process server %s may register now, for %s (hosts %s), with:\n"+
				"   lifeboat process-server register --server https://THIS-SITE:9440 --passphrase-file FILE --name %s --host %s --advertise %s\n",
				ps.Name, ps.URL, strings.Join(ps.Hosts, ", "), ps.Name, strings.Join(ps.Hosts, " --host "), ps.URL)
			return nil
		},
	}
}

func processServerRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:  "remove",
		Usage: "on the site: remove a scale-out process server; its items move to the others",
		Description: "Revokes its client certificate (its heartbeats are refused), forgets it and moves its items to the least\n" +
			"loaded process servers that are up. Its replicas and points stay on the shared target.",
		ArgsUsage:    "NAME",
		Flags:        siteFlags(),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			args, err := leafArgs(c, 1, "the process server's name")
			if err != nil {
				return err
			}
			var out control.RemovedProcessServer
			if err := siteCall(c, http.MethodDelete, "/process-servers/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "removed process server %s: %d certificate(s) revoked; its items move to the others\n", args[0], len(out.Revoked))
			return nil
		},
	}
}
