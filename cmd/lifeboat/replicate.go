package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/urfave/cli/v2"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/tracker"
)

// replicationOptions are the agent's flags for shipping to a process server.
type replicationOptions struct {
	Server       string
	Cert         string
	Key          string
	CA           string
	TagInterval  time.Duration
	JournalQuota int64
	Compression  zstd.EncoderLevel
	MaxBackoff   time.Duration
	Checkpoint   time.Duration
	HotSet       int64
	CopyMemory   int64
}

const statusFileName = "status.json"

func replicationFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Usage: "`URL` of the process server, https://HOST[:9443]; without it the agent only journals"},
		&cli.StringFlag{Name: "cert", Usage: "`FILE` with this agent's certificate (lifeboat certs issue)"},
		&cli.StringFlag{Name: "key", Usage: "`FILE` with this agent's private key"},
		&cli.StringFlag{Name: "ca", Usage: "`FILE` with the site's CA certificate"},
		&cli.DurationFlag{Name: "tag-interval", Value: pipeline.DefaultTagInterval,
			Usage: "take a crash-consistent recovery point this `OFTEN` (at least 1s) while the volume changes"},
		&cli.StringFlag{Name: "journal-quota", Value: "4GiB",
			Usage: "`SIZE` of unshipped journal per volume; beyond it the agent tracks dirty regions only and resyncs them later"},
		&cli.StringFlag{Name: "compression", Value: "fastest", Usage: "zstd `LEVEL` on the wire: fastest, default, better, best or none"},
		&cli.DurationFlag{Name: "max-backoff", Value: pipeline.DefaultMaxBackoff,
			Usage: "when the server is unreachable, retry at least this `OFTEN` (backoff doubles from 1s up to it, with jitter)"},
		&cli.DurationFlag{Name: "checkpoint-interval", Value: tracker.DefaultCheckpointInterval,
			Usage: "clear the regions the site has acknowledged from the dirty bitmap this `OFTEN`; after a crash of the agent\n" +
				"\tthe regions not cleared yet are copied again (shorter: less to copy again, more fsyncs)"},
		&cli.StringFlag{Name: "hot-set", Value: "1GiB",
			Usage: "`SIZE` of each volume's recently written regions that stay marked dirty after the site acknowledged them,\n" +
				"\tso that writing them again costs no fsync of the dirty bitmap (DRBD's activity log); after a crash\n" +
				"\tof the agent or the machine they are copied again. 0: clear every acknowledged region (most fsyncs)"},
		&cli.StringFlag{Name: "copy-memory", Value: "32MiB",
			Usage: "`SIZE` of memory per volume for an initial replication or a full resync: what it copies is shipped from\n" +
				"\tmemory instead of being written to the journal first, and waits for the site beyond SIZE. If the agent\n" +
				"\tstops meanwhile, the copy resumes from the regions not yet acknowledged. 0: journal the copy to disk"},
	}
}

func parseReplicationOptions(c *cli.Context) (replicationOptions, error) {
	o := replicationOptions{Server: c.String("server"), Cert: c.String("cert"), Key: c.String("key"), CA: c.String("ca"),
		TagInterval: c.Duration("tag-interval"), MaxBackoff: c.Duration("max-backoff"), Checkpoint: c.Duration("checkpoint-interval")}
	if o.Checkpoint < 100*time.Millisecond {
		return o, usageError("--checkpoint-interval %v: want at least 100ms", o.Checkpoint)
	}
	q, err := parseSize(c.String("journal-quota"))
	if err != nil {
		return o, usageError("--journal-quota: %v", err)
	}
	o.JournalQuota = q
	if o.HotSet, err = parseSize(c.String("hot-set")); err != nil {
		return o, usageError("--hot-set: %v", err)
	}
	if o.CopyMemory, err = parseSize(c.String("copy-memory")); err != nil {
		return o, usageError("--copy-memory: %v", err)
	}
	if o.CopyMemory != 0 && o.CopyMemory < tracker.MinCopyMemory {
		return o, usageError("--copy-memory %s: want 0 or at least %s", c.String("copy-memory"), humanBytes(tracker.MinCopyMemory))
	}
	switch lvl := c.String("compression"); lvl {
	case "none":
	default:
		ok, l := zstd.EncoderLevelFromString(lvl)
		if !ok {
			return o, usageError("--compression %q: want fastest, default, better, best or none", lvl)
		}
		o.Compression = l
	}
	if o.Server == "" {
		for _, f := range []string{"cert", "key", "ca"} {
			if c.IsSet(f) {
				return o, usageError("--%s needs --server", f)
			}
		}
		return o, nil
	}
	u, err := url.Parse(o.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return o, usageError("--server %q: want https://HOST[:PORT] (there is no plaintext port)", o.Server)
	}
	u.Host = hostPort(u.Host)
	o.Server = "https://" + u.Host
	if o.Cert == "" || o.Key == "" || o.CA == "" {
		return o, usageError("--server needs --cert, --key and --ca (issue them with 'lifeboat certs issue')")
	}
	if o.MaxBackoff < time.Second {
		return o, usageError("--max-backoff %v: at least 1s", o.MaxBackoff)
	}
	if o.TagInterval != 0 && o.TagInterval < pipeline.MinTagInterval {
		return o, usageError("--tag-interval %v: at least %v, or 0 to take no periodic tags", o.TagInterval, pipeline.MinTagInterval)
	}
	return o, nil
}

// httpClient is the agent's mutually authenticated client.
func httpClient(cert, key, ca string) (*http.Client, error) {
	conf, err := pki.ClientTLS(cert, key, ca)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4,
		IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 15 * time.Second, ResponseHeaderTimeout: 5 * time.Minute}
	return &http.Client{Transport: tr}, nil
}

// startShippers starts one shipper per volume and a goroutine that writes
// their status to JOURNAL-DIR/NAME/status.json every second. The returned
// function stops them and waits.
func (a *agent) startShippers(ctx context.Context, o agentOptions) (func(), error) {
	if o.Replication.Server == "" {
		return func() {}, nil
	}
	client, err := httpClient(o.Replication.Cert, o.Replication.Key, o.Replication.CA)
	if err != nil {
		return nil, usageError("%v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var shippers []*pipeline.Shipper
	for i, v := range a.vols {
		s := pipeline.NewShipper(v, a.specs[i].Name, o.Replication.Server, client)
		s.TagInterval, s.Compression, s.Logger = o.Replication.TagInterval, o.Replication.Compression, a.log
		s.MaxBackoff = o.Replication.MaxBackoff
		shippers = append(shippers, s)
		a.shippers = append(a.shippers, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(ctx); err != nil {
				a.log.Error("shipper stopped", "volume", s.Name, "err", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			for i, s := range shippers {
				writeStatus(filepath.Join(o.JournalDir, a.specs[i].Name, statusFileName), s.Status())
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); wg.Wait() }, nil
}

// writeStatus replaces a status file atomically; errors only cost freshness.
func writeStatus(path string, st pipeline.ShipperStatus) {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return
	}
	tmp := path + ".tmp"
	if os.WriteFile(tmp, append(b, '\n'), 0o600) == nil {
		os.Rename(tmp, path)
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the site's protected items, or (--journal-dir) this agent's volumes",
		Description: "On the site: every protected item with its machine, state (initial replication n %, protected,\n" +
			"resyncing, bitmap mode, paused, test failover active, failed over, reprotecting), RPO, latest\n" +
			"recovery point and health (Healthy, Warning, Critical) with the reason, from the configuration server.\n\n" +
			"On a machine, with --journal-dir: the status the running agent writes every second beside each\n" +
			"volume's journal: connection, shipped bytes, RPO, tracking mode and resync progress.\n\n" +
			"Examples:\n" +
			"   lifeboat status --data-dir /var/lib/lifeboat/server --output json\n" +
			"   lifeboat status --journal-dir /var/lib/lifeboat/journal",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "journal-dir", Usage: "the agent's `DIR` (/var/lib/lifeboat/journal): show this machine's volumes instead of the site's"},
			outputFlag(),
		}, siteFlags()...),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			if _, err := leafArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			dir := c.String("journal-dir")
			if dir == "" {
				if !c.IsSet("data-dir") && !c.IsSet("cert") {
					if _, err := os.Stat(pki.Paths(defaultServerDataDir).AdminCert); err == nil {
						c.Set("data-dir", defaultServerDataDir)
					} else if _, err := os.Stat("/var/lib/lifeboat/journal"); err == nil {
						dir = "/var/lib/lifeboat/journal"
					}
				}
				if dir == "" {
					return siteStatus(c, format)
				}
			}
			files, _ := filepath.Glob(filepath.Join(dir, "*", statusFileName))
			if len(files) == 0 {
				return failure("no status in %s: is an agent with --server running there?", dir)
			}
			var all []pipeline.ShipperStatus
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				var st pipeline.ShipperStatus
				if err := json.Unmarshal(b, &st); err != nil {
					return fmt.Errorf("%s: %w", f, err)
				}
				all = append(all, st)
			}
			if format == "json" {
				return printJSON(c.App.Writer, all)
			}
			for _, st := range all {
				printStatus(c.App.Writer, st)
			}
			return nil
		},
	}
}

func printStatus(w io.Writer, st pipeline.ShipperStatus) {
	conn := "connected"
	switch {
	case st.Stopped != "":
		conn = "NOT replicating"
	case !st.Connected:
		conn = "NOT connected: " + st.LastError
	}
	fmt.Fprintf(w, "%s → %s (%s)\n", st.Volume, st.Server, conn)
	if st.Stopped != "" {
		fmt.Fprintf(w, "  REPLICATION STOPPED: %s\n", st.Stopped)
	}
	if st.Tracker.ReadOnly != "" {
		fmt.Fprintf(w, "  READ-ONLY (writes get EPERM): %s\n", st.Tracker.ReadOnly)
	}
	fmt.Fprintf(w, "  tracking: %s generation %d", st.Tracker.Mode, st.Tracker.Generation)
	if st.Tracker.ModeReason != "" {
		fmt.Fprintf(w, " (%s)", st.Tracker.ModeReason)
	}
	fmt.Fprintf(w, "\n  shipped: %d segments, %s (%s on the wire), acked seq %d, RPO %s\n",
		st.SegmentsSent, humanBytes(uint64(st.BytesRaw)), humanBytes(uint64(st.BytesWire)), st.AckedSeq, rpoString(st.RPOSeconds))
	if st.SiteDiskFull != "" {
		quota := ""
		if q := st.Tracker.JournalQuota; q > 0 {
			quota = " (--journal-quota " + humanBytes(uint64(q)) + ", then dirty regions only)"
		}
		fmt.Fprintf(w, "  site disk full: the recovery site refuses segments until space is freed there; %s of journal waits here%s\n",
			humanBytes(uint64(st.Tracker.JournalBytes)), quota)
	}
	if p := st.Resync; p != nil {
		pct := 0.0
		if p.Total > 0 {
			pct = 100 * float64(p.Done) / float64(p.Total)
		}
		fmt.Fprintf(w, "  resync (%s): %s: %.0f%% %s of %s, %s/s, ETA %s\n", p.Phase, p.Reason, pct, humanBytes(uint64(p.Done)),
			humanBytes(uint64(p.Total)), humanBytes(uint64(int64(p.RateBps))), (time.Duration(p.ETASeconds) * time.Second).String())
	} else if st.Tracker.Resync != "" {
		fmt.Fprintf(w, "  resync pending: %s\n", st.Tracker.Resync)
	}
}

// rpoString shows a status's RPO; nil means no recovery point exists yet.
func rpoString(rpo *float64) string {
	if rpo == nil {
		return "unbounded (no recovery point yet)"
	}
	return fmt.Sprintf("%.1fs", *rpo)
}
