// Command gocompat drives HashiCorp's Go client (github.com/hashicorp/consul/api) against a
// running berth registry and prints one line per behaviour: "ok" or "FAIL" with the client's
// error. It exits 1 if any behaviour failed. run.sh starts the registry and runs it.
//
// Environment: BERTH_ADDR (host:port of the registry), BERTH_TOKEN (the management token when
// the registry runs with ACLs on; empty for ACLs off).
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

type result struct {
	name string
	err  error
}

var results []result

// onAgent: the program talks to a client agent joined to the server (BERTH_AGENT set).
var onAgent bool

// step runs one behaviour and records its outcome; a panic counts as a failure.
func step(name string, f func() error) {
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return f()
	}()
	results = append(results, result{name, err})
	if err != nil {
		fmt.Printf("FAIL %s: %v\n", name, err)
	} else {
		fmt.Printf("ok   %s\n", name)
	}
}

func expect(cond bool, format string, args ...interface{}) error {
	if cond {
		return nil
	}
	return fmt.Errorf(format, args...)
}

func main() {
	addr := os.Getenv("BERTH_ADDR")
	token := os.Getenv("BERTH_TOKEN")
	if addr == "" {
		fmt.Fprintln(os.Stderr, "BERTH_ADDR is not set")
		os.Exit(2)
	}
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.Token = token
	client, err := api.NewClient(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	acl := token != ""
	onAgent = os.Getenv("BERTH_AGENT") != ""
	mode := "acl-off"
	if acl {
		mode = "acl-on"
	}
	if onAgent {
		mode = "agent, " + mode
	}
	fmt.Printf("# consul api against %s (%s)\n", addr, mode)

	node := statusAndAgent(client)
	kv(client)
	blocking(client)
	sessions(client, node)
	locks(client)
	agentServices(client, node)
	health(client, node)
	catalog(client)
	txn(client, node)
	events(client, node)
	peers(client, node)
	monitor(client)
	watchLoop(client)
	consulSD(client)
	if acl {
		aclFlow(client, cfg)
		aclEvents(client, cfg)
	} else {
		step("acl: disabled answers 401 ACL support disabled", func() error {
			_, _, err := client.ACL().PolicyList(nil)
			return expect(err != nil && strings.Contains(err.Error(), "ACL support disabled"), "got %v", err)
		})
		step("acl: agent token update with ACLs off is 401", func() error {
			_, err := client.Agent().UpdateDefaultACLToken("x", nil)
			return expect(err != nil && strings.Contains(err.Error(), "ACL support disabled"), "got %v", err)
		})
	}

	failed := 0
	for _, r := range results {
		if r.err != nil {
			failed++
		}
	}
	fmt.Printf("# %d behaviours, %d failed (%s)\n", len(results), failed, mode)
	if failed > 0 {
		os.Exit(1)
	}
}

func statusAndAgent(c *api.Client) string {
	var node string
	step("status: leader and peers", func() error {
		leader, err := c.Status().Leader()
		if err != nil {
			return err
		}
		peers, err := c.Status().Peers()
		if err != nil {
			return err
		}
		return expect(leader != "" && len(peers) == 1 && peers[0] == leader, "leader %q peers %v", leader, peers)
	})
	step("agent: self (Config, Member, DebugConfig, no xDS)", func() error {
		self, err := c.Agent().Self()
		if err != nil {
			return err
		}
		node, _ = self["Config"]["NodeName"].(string)
		if err := expect(node != "" && self["Config"]["Version"] != nil, "Config %v", self["Config"]); err != nil {
			return err
		}
		if _, ok := self["DebugConfig"]; !ok {
			return fmt.Errorf("no DebugConfig")
		}
		if _, ok := self["xDS"]; ok {
			return fmt.Errorf("an xDS block, but no xDS server runs")
		}
		name, err := c.Agent().NodeName()
		return expect(err == nil && name == node, "NodeName %q %v", name, err)
	})
	step("agent: members (lan and wan)", func() error {
		lan, err := c.Agent().Members(false)
		if err != nil {
			return err
		}
		wan, err := c.Agent().Members(true)
		if err != nil {
			return err
		}
		if err := expect(len(lan) >= 1 && lan[0].Status == 1, "lan %+v", lan); err != nil {
			return err
		}
		if onAgent {
			// only servers are in the WAN pool
			return expect(len(wan) == 0, "wan on a client agent %+v", wan)
		}
		return expect(len(wan) == 1 && strings.HasPrefix(wan[0].Name, node+"."), "wan %+v", wan)
	})
	return node
}

func kv(c *api.Client) {
	k := c.KV()
	step("kv: put/get", func() error {
		if _, err := k.Put(&api.KVPair{Key: "gocl/a", Value: []byte("1"), Flags: 42}, nil); err != nil {
			return err
		}
		p, _, err := k.Get("gocl/a", nil)
		if err != nil {
			return err
		}
		return expect(p != nil && string(p.Value) == "1" && p.Flags == 42, "pair %+v", p)
	})
	step("kv: get missing is nil", func() error {
		p, meta, err := k.Get("gocl/missing", nil)
		return expect(err == nil && p == nil && meta.LastIndex > 0, "pair %+v meta %+v err %v", p, meta, err)
	})
	step("kv: empty value", func() error {
		if _, err := k.Put(&api.KVPair{Key: "gocl/empty"}, nil); err != nil {
			return err
		}
		p, _, err := k.Get("gocl/empty", nil)
		return expect(err == nil && p != nil && len(p.Value) == 0, "pair %+v %v", p, err)
	})
	step("kv: list and keys with separator", func() error {
		for _, key := range []string{"gocl/dir/x", "gocl/dir/y", "gocl/dir/sub/z"} {
			if _, err := k.Put(&api.KVPair{Key: key, Value: []byte(key)}, nil); err != nil {
				return err
			}
		}
		list, _, err := k.List("gocl/dir/", nil)
		if err != nil {
			return err
		}
		keys, _, err := k.Keys("gocl/dir/", "/", nil)
		if err != nil {
			return err
		}
		if err := expect(len(list) == 3 && list[0].Key == "gocl/dir/sub/z", "list %v", list); err != nil {
			return err
		}
		return expect(strings.Join(keys, ",") == "gocl/dir/sub/,gocl/dir/x,gocl/dir/y", "keys %v", keys)
	})
	step("kv: cas", func() error {
		p, _, err := k.Get("gocl/a", nil)
		if err != nil {
			return err
		}
		ok, _, err := k.CAS(&api.KVPair{Key: "gocl/a", Value: []byte("2"), ModifyIndex: p.ModifyIndex + 1000}, nil)
		if err != nil || ok {
			return fmt.Errorf("stale cas: %v %v", ok, err)
		}
		ok, _, err = k.CAS(&api.KVPair{Key: "gocl/a", Value: []byte("2"), ModifyIndex: p.ModifyIndex}, nil)
		if err != nil || !ok {
			return fmt.Errorf("cas: %v %v", ok, err)
		}
		ok, _, err = k.CAS(&api.KVPair{Key: "gocl/new", Value: []byte("n")}, nil)
		if err != nil || !ok {
			return fmt.Errorf("cas=0 create: %v %v", ok, err)
		}
		ok, _, err = k.CAS(&api.KVPair{Key: "gocl/new", Value: []byte("n")}, nil)
		return expect(err == nil && !ok, "cas=0 on existing: %v %v", ok, err)
	})
	step("kv: delete-cas and delete-tree", func() error {
		p, _, err := k.Get("gocl/new", nil)
		if err != nil || p == nil {
			return fmt.Errorf("get: %v", err)
		}
		ok, _, err := k.DeleteCAS(&api.KVPair{Key: "gocl/new", ModifyIndex: p.ModifyIndex + 1}, nil)
		if err != nil || ok {
			return fmt.Errorf("stale delete-cas: %v %v", ok, err)
		}
		ok, _, err = k.DeleteCAS(&api.KVPair{Key: "gocl/new", ModifyIndex: p.ModifyIndex}, nil)
		if err != nil || !ok {
			return fmt.Errorf("delete-cas: %v %v", ok, err)
		}
		if _, err := k.DeleteTree("gocl/dir/", nil); err != nil {
			return err
		}
		list, _, err := k.List("gocl/dir/", nil)
		return expect(err == nil && len(list) == 0, "after delete-tree %v %v", list, err)
	})
	step("kv: invalid key is an error", func() error {
		_, err := k.Put(&api.KVPair{Key: "/gocl/leading"}, nil)
		return expect(err != nil, "put of a key with a leading / succeeded")
	})
}

func blocking(c *api.Client) {
	k := c.KV()
	step("blocking: kv get wakes on change", func() error {
		_, meta, err := k.Get("gocl/a", nil)
		if err != nil {
			return err
		}
		go func() {
			time.Sleep(300 * time.Millisecond)
			_, _ = k.Put(&api.KVPair{Key: "gocl/a", Value: []byte("woken")}, nil)
		}()
		start := time.Now()
		p, meta2, err := k.Get("gocl/a", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
		if err != nil {
			return err
		}
		took := time.Since(start)
		return expect(string(p.Value) == "woken" && meta2.LastIndex > meta.LastIndex && took > 200*time.Millisecond && took < 5*time.Second,
			"value %q index %d->%d after %v", p.Value, meta.LastIndex, meta2.LastIndex, took)
	})
	step("blocking: wait time elapses with the same index", func() error {
		_, meta, err := k.Get("gocl/a", nil)
		if err != nil {
			return err
		}
		start := time.Now()
		_, meta2, err := k.Get("gocl/a", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 500 * time.Millisecond})
		if err != nil {
			return err
		}
		took := time.Since(start)
		return expect(meta2.LastIndex == meta.LastIndex && took >= 450*time.Millisecond && meta2.KnownLeader,
			"index %d->%d after %v leader %v", meta.LastIndex, meta2.LastIndex, took, meta2.KnownLeader)
	})
	step("blocking: list wakes on a new key under the prefix", func() error {
		_, meta, err := k.List("gocl/blk/", nil)
		if err != nil {
			return err
		}
		go func() {
			time.Sleep(200 * time.Millisecond)
			_, _ = k.Put(&api.KVPair{Key: "gocl/blk/one", Value: []byte("1")}, nil)
		}()
		list, meta2, err := k.List("gocl/blk/", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
		return expect(err == nil && len(list) == 1 && meta2.LastIndex > meta.LastIndex, "list %v %v %v", list, meta2, err)
	})
}

func sessions(c *api.Client, node string) {
	s := c.Session()
	step("session: create/info/list/node/renew/destroy", func() error {
		id, _, err := s.Create(&api.SessionEntry{Name: "gocl", TTL: "15s", Behavior: api.SessionBehaviorDelete, LockDelay: time.Second}, nil)
		if err != nil {
			return err
		}
		info, _, err := s.Info(id, nil)
		if err != nil || info == nil {
			return fmt.Errorf("info %v %v", info, err)
		}
		if err := expect(info.Node == node && info.TTL == "15s" && info.Behavior == "delete" && info.LockDelay == time.Second,
			"info %+v", info); err != nil {
			return err
		}
		list, _, err := s.List(nil)
		if err != nil {
			return err
		}
		onNode, _, err := s.Node(node, nil)
		if err != nil {
			return err
		}
		renewed, _, err := s.Renew(id, nil)
		if err != nil || renewed == nil {
			return fmt.Errorf("renew %v %v", renewed, err)
		}
		ok, _, err := c.KV().Acquire(&api.KVPair{Key: "gocl/held", Value: []byte("x"), Session: id}, nil)
		if err != nil || !ok {
			return fmt.Errorf("acquire %v %v", ok, err)
		}
		if _, err := s.Destroy(id, nil); err != nil {
			return err
		}
		gone, _, err := s.Info(id, nil)
		if err != nil || gone != nil {
			return fmt.Errorf("info after destroy %v %v", gone, err)
		}
		held, _, err := c.KV().Get("gocl/held", nil)
		if err != nil || held != nil {
			return fmt.Errorf("behavior delete left %+v %v", held, err)
		}
		missing, _, err := s.Renew(id, nil)
		if err != nil || missing != nil {
			return fmt.Errorf("renew of a destroyed session: %v %v", missing, err)
		}
		return expect(len(list) >= 1 && len(onNode) >= 1, "list %d node %d", len(list), len(onNode))
	})
	step("session: renew periodic", func() error {
		id, _, err := s.CreateNoChecks(&api.SessionEntry{TTL: "10s"}, nil)
		if err != nil {
			return err
		}
		done := make(chan struct{})
		errc := make(chan error, 1)
		go func() { errc <- s.RenewPeriodic("10s", id, nil, done) }()
		time.Sleep(300 * time.Millisecond)
		close(done)
		err = <-errc
		gone, _, _ := s.Info(id, nil)
		return expect(err == nil && gone == nil, "renew periodic %v, session left %+v", err, gone)
	})
}

func locks(c *api.Client) {
	step("lock: api.Lock acquire, contend, release", func() error {
		l, err := c.LockOpts(&api.LockOptions{Key: "gocl/lock", Value: []byte("me"), SessionTTL: "10s"})
		if err != nil {
			return err
		}
		lost, err := l.Lock(nil)
		if err != nil || lost == nil {
			return fmt.Errorf("lock: %v", err)
		}
		other, err := c.LockOpts(&api.LockOptions{Key: "gocl/lock", LockTryOnce: true, LockWaitTime: 300 * time.Millisecond})
		if err != nil {
			return err
		}
		lost2, err := other.Lock(nil)
		if err != nil || lost2 != nil {
			return fmt.Errorf("second lock got %v %v", lost2, err)
		}
		if err := l.Unlock(); err != nil {
			return err
		}
		lost2, err = other.Lock(nil)
		if err != nil || lost2 == nil {
			return fmt.Errorf("lock after unlock: %v", err)
		}
		if err := other.Unlock(); err != nil {
			return err
		}
		return other.Destroy()
	})
	step("lock: lost when the session is destroyed", func() error {
		l, err := c.LockOpts(&api.LockOptions{Key: "gocl/lock2", SessionTTL: "10s"})
		if err != nil {
			return err
		}
		lost, err := l.Lock(nil)
		if err != nil || lost == nil {
			return fmt.Errorf("lock: %v", err)
		}
		p, _, err := c.KV().Get("gocl/lock2", nil)
		if err != nil || p == nil {
			return fmt.Errorf("get: %v", err)
		}
		if _, err := c.Session().Destroy(p.Session, nil); err != nil {
			return err
		}
		select {
		case <-lost:
			return nil
		case <-time.After(5 * time.Second):
			return fmt.Errorf("lock not reported lost")
		}
	})
	step("semaphore: limit 2", func() error {
		var held []*api.Semaphore
		for i := 0; i < 2; i++ {
			sem, err := c.SemaphoreOpts(&api.SemaphoreOptions{Prefix: "gocl/sem/", Limit: 2, SessionTTL: "10s"})
			if err != nil {
				return err
			}
			ch, err := sem.Acquire(nil)
			if err != nil || ch == nil {
				return fmt.Errorf("acquire %d: %v", i, err)
			}
			held = append(held, sem)
		}
		third, err := c.SemaphoreOpts(&api.SemaphoreOptions{Prefix: "gocl/sem/", Limit: 2, SemaphoreTryOnce: true, SemaphoreWaitTime: 300 * time.Millisecond})
		if err != nil {
			return err
		}
		ch, err := third.Acquire(nil)
		if err != nil || ch != nil {
			return fmt.Errorf("third got a slot: %v", err)
		}
		if err := held[0].Release(); err != nil {
			return err
		}
		ch, err = third.Acquire(nil)
		if err != nil || ch == nil {
			return fmt.Errorf("third after a release: %v", err)
		}
		for _, s := range []*api.Semaphore{held[1], third} {
			if err := s.Release(); err != nil {
				return err
			}
		}
		return third.Destroy()
	})
}

// probeTarget serves 200 on /health over HTTP; its address is also the TCP check's target.
func probeTarget() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }))
	}()
	return ln.Addr().String(), nil
}

func waitFor(what string, d time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := f()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v (last error %v)", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func agentServices(c *api.Client, node string) {
	a := c.Agent()
	target, err := probeTarget()
	step("agent: probe target", func() error { return err })
	step("agent: service register with HTTP, TCP and TTL checks (ID with /)", func() error {
		return a.ServiceRegister(&api.AgentServiceRegistration{
			ID: "gocl/web-1", Name: "gocl-web", Tags: []string{"v1", "primary"}, Port: 8080, Address: "127.0.0.1",
			Meta: map[string]string{"team": "berth"},
			Checks: api.AgentServiceChecks{
				{CheckID: "gocl/http", Name: "http", HTTP: "http://" + target + "/health", Interval: "1s", Timeout: "1s"},
				{CheckID: "gocl/tcp", Name: "tcp", TCP: target, Interval: "1s", Timeout: "1s", DeregisterCriticalServiceAfter: "1m"},
				{CheckID: "gocl/ttl", Name: "ttl", TTL: "30s"},
			},
		})
	})
	step("agent: second instance, TTL check only", func() error {
		return a.ServiceRegister(&api.AgentServiceRegistration{
			ID: "gocl-web-2", Name: "gocl-web", Tags: []string{"v2"}, Port: 8081,
			Check: &api.AgentServiceCheck{CheckID: "gocl-web-2-ttl", TTL: "30s"},
		})
	})
	step("agent: services, service by id, services with filter", func() error {
		all, err := a.Services()
		if err != nil {
			return err
		}
		svc, _, err := a.Service("gocl/web-1", nil)
		if err != nil {
			return err
		}
		filtered, err := a.ServicesWithFilter(`"v2" in Tags`)
		if err != nil {
			return err
		}
		if err := expect(all["gocl/web-1"] != nil && all["gocl/web-1"].Meta["team"] == "berth", "services %v", all); err != nil {
			return err
		}
		if err := expect(svc.ID == "gocl/web-1" && svc.Weights.Passing == 1 && svc.Port == 8080, "service %+v", svc); err != nil {
			return err
		}
		return expect(len(filtered) == 1 && filtered["gocl-web-2"] != nil, "filtered %v", filtered)
	})
	step("agent: HTTP and TCP checks turn passing", func() error {
		return waitFor("http+tcp passing", 10*time.Second, func() (bool, error) {
			checks, err := a.ChecksWithFilter(`Status == "passing"`)
			return err == nil && checks["gocl/http"] != nil && checks["gocl/tcp"] != nil, err
		})
	})
	step("agent: checks carry their definitions", func() error {
		checks, err := a.Checks()
		if err != nil {
			return err
		}
		h := checks["gocl/http"]
		t := checks["gocl/tcp"]
		ttl := checks["gocl/ttl"]
		if h == nil || t == nil || ttl == nil {
			return fmt.Errorf("checks %v", checks)
		}
		return expect(h.Type == "http" && h.ServiceID == "gocl/web-1" && h.Definition.HTTP != "" && h.Definition.Interval == api.ReadableDuration(time.Second) &&
			t.Type == "tcp" && t.Definition.DeregisterCriticalServiceAfter == api.ReadableDuration(time.Minute) && ttl.Type == "ttl" && ttl.Status == "critical",
			"http %+v tcp %+v ttl %+v", h, t, ttl)
	})
	step("agent: TTL pass/warn/fail/update", func() error {
		if err := a.PassTTL("gocl/ttl", "all good"); err != nil {
			return err
		}
		if err := a.UpdateTTL("gocl-web-2-ttl", "fine", api.HealthPassing); err != nil {
			return err
		}
		checks, err := a.Checks()
		if err != nil {
			return err
		}
		if err := expect(checks["gocl/ttl"].Status == "passing" && checks["gocl/ttl"].Output == "all good", "ttl %+v", checks["gocl/ttl"]); err != nil {
			return err
		}
		err = a.PassTTL("gocl/http", "")
		return expect(err != nil && strings.Contains(err.Error(), "does not have associated TTL"), "pass of an http check: %v", err)
	})
	step("agent: health by service name and id", func() error {
		status, infos, err := a.AgentHealthServiceByName("gocl-web")
		if err != nil {
			return err
		}
		status2, info, err := a.AgentHealthServiceByID("gocl/web-1")
		if err != nil {
			return err
		}
		return expect(status == api.HealthPassing && len(infos) == 2 && status2 == api.HealthPassing && info.Service.ID == "gocl/web-1",
			"by name %s %d, by id %s %+v", status, len(infos), status2, info)
	})
	step("agent: check register with an unknown ServiceID", func() error {
		err := a.CheckRegister(&api.AgentCheckRegistration{ID: "gocl-orphan", Name: "orphan", ServiceID: "no-such-service",
			AgentServiceCheck: api.AgentServiceCheck{TTL: "10s"}})
		return expect(err != nil && strings.Contains(err.Error(), `404 (ServiceID "no-such-service" does not exist)`), "got %v", err)
	})
	step("agent: node check register and deregister", func() error {
		if err := a.CheckRegister(&api.AgentCheckRegistration{ID: "gocl-node", Name: "node ttl", AgentServiceCheck: api.AgentServiceCheck{TTL: "10s", Status: "passing"}}); err != nil {
			return err
		}
		return a.CheckDeregister("gocl-node")
	})
	step("agent: maintenance on and off", func() error {
		if err := a.EnableServiceMaintenance("gocl-web-2", "gocl"); err != nil {
			return err
		}
		checks, err := a.Checks()
		if err != nil {
			return err
		}
		if checks["_service_maintenance:gocl-web-2"] == nil {
			return fmt.Errorf("no maintenance check")
		}
		return a.DisableServiceMaintenance("gocl-web-2")
	})
	step("agent: unknown service deregister is an error", func() error {
		err := a.ServiceDeregister("gocl-nope")
		return expect(err != nil && strings.Contains(err.Error(), "Unknown service ID"), "got %v", err)
	})
	_ = node
}

func health(c *api.Client, node string) {
	h := c.Health()
	step("health: service, passing only, tag", func() error {
		err := waitFor("both instances in the catalog", 10*time.Second, func() (bool, error) {
			all, _, err := h.Service("gocl-web", "", false, nil)
			return err == nil && len(all) == 2, err
		})
		if err != nil {
			return err
		}
		if err := c.Agent().FailTTL("gocl-web-2-ttl", "down"); err != nil {
			return err
		}
		return waitFor("passing only drops the failing instance", 10*time.Second, func() (bool, error) {
			passing, _, err := h.Service("gocl-web", "", true, nil)
			tagged, _, err2 := h.Service("gocl-web", "v1", false, nil)
			if err == nil {
				err = err2
			}
			return err == nil && len(passing) == 1 && passing[0].Service.ID == "gocl/web-1" && len(tagged) == 1 &&
				passing[0].Checks.AggregatedStatus() == api.HealthPassing, err
		})
	})
	step("health: checks of a service, node, state", func() error {
		checks, _, err := h.Checks("gocl-web", nil)
		if err != nil {
			return err
		}
		nodeChecks, _, err := h.Node(node, nil)
		if err != nil {
			return err
		}
		critical, _, err := h.State(api.HealthCritical, nil)
		if err != nil {
			return err
		}
		any, _, err := h.State(api.HealthAny, nil)
		if err != nil {
			return err
		}
		hasSerf := false
		for _, ch := range nodeChecks {
			if ch.CheckID == "serfHealth" {
				hasSerf = true
			}
		}
		return expect(len(checks) == 4 && hasSerf && len(critical) >= 1 && len(any) > len(critical), "checks %d node serf %v critical %d any %d", len(checks), hasSerf, len(critical), len(any))
	})
	step("health: service with filter", func() error {
		entries, _, err := h.Service("gocl-web", "", false, &api.QueryOptions{Filter: `Service.Port == 8081`})
		return expect(err == nil && len(entries) == 1 && entries[0].Service.ID == "gocl-web-2", "%v %v", entries, err)
	})
	step("health: ?peer= on a single-datacenter agent", func() error {
		entries, _, err := h.Service("gocl-web", "", false, &api.QueryOptions{Peer: "elsewhere"})
		return expect(err == nil && len(entries) == 0, "%v %v", entries, err)
	})
}

func catalog(c *api.Client) {
	cat := c.Catalog()
	step("catalog: register an external node with a service and check", func() error {
		_, err := cat.Register(&api.CatalogRegistration{
			Node: "gocl-ext", Address: "10.9.9.9", NodeMeta: map[string]string{"rack": "r1"},
			Service: &api.AgentService{ID: "gocl-db-1", Service: "gocl-db", Tags: []string{"primary"}, Port: 5432},
			Check:   &api.AgentCheck{Node: "gocl-ext", CheckID: "gocl-db-check", Name: "db", Status: api.HealthPassing, ServiceID: "gocl-db-1"},
		}, nil)
		return err
	})
	step("catalog: datacenters, nodes, services, service, node", func() error {
		dcs, err := cat.Datacenters()
		if err != nil {
			return err
		}
		nodes, _, err := cat.Nodes(&api.QueryOptions{NodeMeta: map[string]string{"rack": "r1"}})
		if err != nil {
			return err
		}
		services, _, err := cat.Services(nil)
		if err != nil {
			return err
		}
		svc, _, err := cat.Service("gocl-db", "primary", nil)
		if err != nil {
			return err
		}
		n, _, err := cat.Node("gocl-ext", nil)
		if err != nil {
			return err
		}
		missing, _, err := cat.Node("gocl-nowhere", nil)
		if err != nil {
			return err
		}
		if err := expect(len(dcs) == 1 && len(nodes) == 1 && nodes[0].Node == "gocl-ext" && services["consul"] != nil, "dcs %v nodes %v services %v", dcs, nodes, services); err != nil {
			return err
		}
		return expect(len(svc) == 1 && svc[0].ServicePort == 5432 && svc[0].Address == "10.9.9.9" && n != nil && n.Services["gocl-db-1"] != nil && missing == nil,
			"service %+v node %+v missing %+v", svc, n, missing)
	})
	step("catalog: node services list", func() error {
		list, meta, err := cat.NodeServiceList("gocl-ext", nil)
		if err != nil {
			return err
		}
		if err := expect(list.Node != nil && list.Node.Address == "10.9.9.9" && len(list.Services) == 1 && list.Services[0].Port == 5432 && meta.LastIndex > 0,
			"%+v %+v", list, meta); err != nil {
			return err
		}
		missing, _, err := cat.NodeServiceList("gocl-nowhere", nil)
		return expect(err == nil && missing.Node == nil && len(missing.Services) == 0, "unknown node %+v %v", missing, err)
	})
	step("catalog: blocking services wakes on a new service", func() error {
		_, meta, err := cat.Services(nil)
		if err != nil {
			return err
		}
		go func() {
			time.Sleep(200 * time.Millisecond)
			_, _ = cat.Register(&api.CatalogRegistration{Node: "gocl-ext", Address: "10.9.9.9",
				Service: &api.AgentService{ID: "gocl-cache", Service: "gocl-cache"}}, nil)
		}()
		services, meta2, err := cat.Services(&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second, AllowStale: true})
		return expect(err == nil && services["gocl-cache"] != nil && meta2.LastIndex > meta.LastIndex, "%v %v", services, err)
	})
	step("catalog: deregister service then node", func() error {
		if _, err := cat.Deregister(&api.CatalogDeregistration{Node: "gocl-ext", ServiceID: "gocl-cache"}, nil); err != nil {
			return err
		}
		if _, err := cat.Deregister(&api.CatalogDeregistration{Node: "gocl-ext"}, nil); err != nil {
			return err
		}
		n, _, err := cat.Node("gocl-ext", nil)
		return expect(err == nil && n == nil, "node after deregister %+v %v", n, err)
	})
}

func txn(c *api.Client, node string) {
	step("txn: kv set/get/check-index", func() error {
		ok, resp, _, err := c.Txn().Txn(api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "gocl/txn/a", Value: []byte("1")}},
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "gocl/txn/b", Value: []byte("2")}},
			{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: "gocl/txn/"}},
		}, nil)
		if err != nil || !ok {
			return fmt.Errorf("txn %v %+v %v", ok, resp, err)
		}
		return expect(len(resp.Results) == 4 && string(resp.Results[3].KV.Value) == "2", "results %+v", resp.Results)
	})
	step("txn: rollback reports errors", func() error {
		ok, resp, _, err := c.Txn().Txn(api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "gocl/txn/c", Value: []byte("3")}},
			{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: "gocl/txn/a"}},
		}, nil)
		if err != nil || ok || len(resp.Errors) != 1 || resp.Errors[0].OpIndex != 1 {
			return fmt.Errorf("txn %v %+v %v", ok, resp, err)
		}
		p, _, err := c.KV().Get("gocl/txn/c", nil)
		return expect(err == nil && p == nil, "rolled back write present %+v", p)
	})
	step("txn: node, service and check verbs", func() error {
		ok, resp, _, err := c.Txn().Txn(api.TxnOps{
			{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: "gocl-txn", Address: "10.1.1.1"}}},
			{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: "gocl-txn", Service: api.AgentService{ID: "gocl-txn-svc", Service: "gocl-txn-svc", Port: 99}}},
			{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{Node: "gocl-txn", CheckID: "gocl-txn-check", Name: "c", Status: api.HealthPassing, ServiceID: "gocl-txn-svc"}}},
			{Node: &api.NodeTxnOp{Verb: api.NodeGet, Node: api.Node{Node: "gocl-txn"}}},
			{Service: &api.ServiceTxnOp{Verb: api.ServiceGet, Node: "gocl-txn", Service: api.AgentService{ID: "gocl-txn-svc"}}},
			{Check: &api.CheckTxnOp{Verb: api.CheckGet, Check: api.HealthCheck{Node: "gocl-txn", CheckID: "gocl-txn-check"}}},
		}, nil)
		if err != nil || !ok {
			return fmt.Errorf("txn %v %+v %v", ok, resp, err)
		}
		if len(resp.Results) != 6 || resp.Results[3].Node == nil || resp.Results[4].Service == nil || resp.Results[5].Check == nil {
			return fmt.Errorf("results %+v", resp.Results)
		}
		r := resp.Results
		if err := expect(r[3].Node.Address == "10.1.1.1" && r[4].Service.ID == "gocl-txn-svc" && r[5].Check.Status == api.HealthPassing, "node %+v service %+v check %+v", r[3].Node, r[4].Service, r[5].Check); err != nil {
			return err
		}
		ok, resp, _, err = c.Txn().Txn(api.TxnOps{{Node: &api.NodeTxnOp{Verb: api.NodeDelete, Node: api.Node{Node: "gocl-txn"}}}}, nil)
		return expect(err == nil && ok, "delete %v %+v %v", ok, resp, err)
	})
	_ = node
}

func events(c *api.Client, node string) {
	step("event: filters decide which agent lists it", func() error {
		for _, e := range []*api.UserEvent{
			{Name: "gocl-mine", NodeFilter: "^" + node + "$"},
			{Name: "gocl-elsewhere", NodeFilter: "^not-" + node + "$"},
			{Name: "gocl-web", ServiceFilter: "^gocl/web", TagFilter: "^v1$"},
			{Name: "gocl-web-v9", ServiceFilter: "^gocl/web", TagFilter: "^v9$"},
		} {
			if _, _, err := c.Event().Fire(e, nil); err != nil {
				return fmt.Errorf("fire %s: %v", e.Name, err)
			}
		}
		list, _, err := c.Event().List("", nil)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, e := range list {
			seen[e.Name] = true
		}
		return expect(seen["gocl-mine"] && seen["gocl-web"] && !seen["gocl-elsewhere"] && !seen["gocl-web-v9"], "listed %v", seen)
	})
	step("event: a tag filter needs a service filter", func() error {
		_, _, err := c.Event().Fire(&api.UserEvent{Name: "gocl-bad", TagFilter: "x"}, nil)
		return expect(err != nil && strings.Contains(err.Error(), "Cannot provide tag filter without service filter"), "got %v", err)
	})
	step("event: fire and list", func() error {
		id, _, err := c.Event().Fire(&api.UserEvent{Name: "gocl-deploy", Payload: []byte("v2")}, nil)
		if err != nil {
			return err
		}
		list, meta, err := c.Event().List("gocl-deploy", nil)
		if err != nil {
			return err
		}
		if err := expect(len(list) == 1 && list[0].ID == id && string(list[0].Payload) == "v2" && meta.LastIndex == c.Event().IDToIndex(id), "list %+v index %d", list, meta.LastIndex); err != nil {
			return err
		}
		go func() {
			time.Sleep(200 * time.Millisecond)
			_, _, _ = c.Event().Fire(&api.UserEvent{Name: "gocl-deploy", Payload: []byte("v3")}, nil)
		}()
		list, meta2, err := c.Event().List("gocl-deploy", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 5 * time.Second})
		return expect(err == nil && len(list) == 2 && meta2.LastIndex != meta.LastIndex, "blocking list %+v %v", list, err)
	})
}

// peers: a single-datacenter registry imports no peer; every read with ?peer= finds nothing.
func peers(c *api.Client, node string) {
	step("peer: catalog and health reads find nothing imported", func() error {
		q := &api.QueryOptions{Peer: "elsewhere"}
		nodes, _, err := c.Catalog().Nodes(q)
		if err != nil {
			return err
		}
		services, _, err := c.Catalog().Services(q)
		if err != nil {
			return err
		}
		n, _, err := c.Catalog().Node(node, q)
		if err != nil {
			return err
		}
		list, _, err := c.Catalog().NodeServiceList(node, q)
		if err != nil {
			return err
		}
		checks, _, err := c.Health().Node(node, q)
		if err != nil {
			return err
		}
		state, _, err := c.Health().State(api.HealthAny, q)
		if err != nil {
			return err
		}
		return expect(len(nodes) == 0 && len(services) == 0 && n == nil && list.Node == nil && len(checks) == 0 && len(state) == 0,
			"nodes %v services %v node %v list %+v checks %v state %v", nodes, services, n, list, checks, state)
	})
}

func monitor(c *api.Client) {
	step("agent: monitor JSON lines", func() error {
		stop := make(chan struct{})
		defer close(stop)
		lines, err := c.Agent().MonitorJSON("debug", stop, nil)
		if err != nil {
			return err
		}
		go func() {
			time.Sleep(200 * time.Millisecond)
			_, _, _ = c.KV().Get("gocl/a", nil)
		}()
		select {
		case line := <-lines:
			return expect(strings.HasPrefix(line, "{") && strings.Contains(line, `"@level"`), "line %q", line)
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no log line within 5s")
		}
	})
	step("agent: monitor streams log lines", func() error {
		stop := make(chan struct{})
		defer close(stop)
		lines, err := c.Agent().Monitor("debug", stop, nil)
		if err != nil {
			return err
		}
		go func() {
			time.Sleep(200 * time.Millisecond)
			_, _ = c.KV().Put(&api.KVPair{Key: "gocl/monitor", Value: []byte("x")}, nil)
			_ = c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "gocl-monitor"})
		}()
		select {
		case line := <-lines:
			return expect(line != "", "empty line")
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no log line within 5s")
		}
	})
	step("agent: monitor rejects an unknown log level", func() error {
		stop := make(chan struct{})
		defer close(stop)
		_, err := c.Agent().Monitor("shouting", stop, nil)
		return expect(err != nil && strings.Contains(err.Error(), "Unknown log level"), "got %v", err)
	})
}

// watchLoop is consul-template's loop: a blocking query on the last index, new data only when
// the index moves, a fresh start if the index goes backwards.
func watchLoop(c *api.Client) {
	step("watch: consul-template style loop over health service", func() error {
		type update struct {
			ids   []string
			index uint64
		}
		updates := make(chan update, 10)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			var index uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				entries, meta, err := c.Health().Service("gocl-watch", "", true, &api.QueryOptions{WaitIndex: index, WaitTime: 2 * time.Second})
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if meta.LastIndex == index {
					continue
				}
				if meta.LastIndex < index {
					index = 0
					continue
				}
				index = meta.LastIndex
				var ids []string
				for _, e := range entries {
					ids = append(ids, e.Service.ID)
				}
				sort.Strings(ids)
				updates <- update{ids, index}
			}
		}()
		first := <-updates
		if len(first.ids) != 0 {
			return fmt.Errorf("first update %v", first.ids)
		}
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "gocl-watch-1", Name: "gocl-watch",
			Check: &api.AgentServiceCheck{TTL: "30s", Status: api.HealthPassing}}); err != nil {
			return err
		}
		timeout := time.After(10 * time.Second)
		for {
			select {
			case u := <-updates:
				if strings.Join(u.ids, ",") == "gocl-watch-1" {
					return c.Agent().ServiceDeregister("gocl-watch-1")
				}
			case <-timeout:
				return fmt.Errorf("the loop never saw gocl-watch-1")
			}
		}
	})
}

// consulSD is Prometheus' consul_sd loop: a blocking, stale read of the service list, then a
// blocking health read per service (passing=false, node and service meta and checks decoded).
func consulSD(c *api.Client) {
	step("watch: Prometheus consul_sd style catalog then health", func() error {
		found := make(chan *api.ServiceEntry, 1)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			var index uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				services, meta, err := c.Catalog().Services(&api.QueryOptions{WaitIndex: index, WaitTime: 2 * time.Second, AllowStale: true})
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				index = meta.LastIndex
				if _, ok := services["gocl-sd"]; !ok {
					continue
				}
				entries, _, err := c.Health().ServiceMultipleTags("gocl-sd", nil, false, &api.QueryOptions{AllowStale: true})
				if err == nil && len(entries) == 1 {
					found <- entries[0]
					return
				}
			}
		}()
		time.Sleep(200 * time.Millisecond)
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "gocl-sd-1", Name: "gocl-sd", Port: 9100,
			Meta:  map[string]string{"job": "node"},
			Check: &api.AgentServiceCheck{TTL: "30s", DeregisterCriticalServiceAfter: "5m"}}); err != nil {
			return err
		}
		defer func() { _ = c.Agent().ServiceDeregister("gocl-sd-1") }()
		select {
		case e := <-found:
			var def api.HealthCheckDefinition
			for _, ch := range e.Checks {
				if ch.ServiceID == "gocl-sd-1" {
					def = ch.Definition
				}
			}
			return expect(e.Service.Port == 9100 && e.Service.Meta["job"] == "node" && len(e.Checks) == 2 && def.DeregisterCriticalServiceAfterDuration == 5*time.Minute,
				"entry %+v definition %+v", e, def)
		case <-time.After(10 * time.Second):
			return fmt.Errorf("the service was never discovered")
		}
	})
}

// aclEvents: event:write to fire, event:read to list (what ACLs drop is left out).
func aclEvents(c *api.Client, cfg *api.Config) {
	step("acl: event write and read rules", func() error {
		p, _, err := c.ACL().PolicyCreate(&api.ACLPolicy{Name: "gocl-events", Rules: `event "gocl-ok" { policy = "write" }`}, nil)
		if err != nil {
			return err
		}
		t, _, err := c.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			return err
		}
		w := &api.WriteOptions{Token: t.SecretID}
		if _, _, err := c.Event().Fire(&api.UserEvent{Name: "gocl-ok"}, w); err != nil {
			return err
		}
		_, _, err = c.Event().Fire(&api.UserEvent{Name: "gocl-no"}, w)
		if err == nil || !strings.Contains(err.Error(), "Permission denied") {
			return fmt.Errorf("fire without event:write: %v", err)
		}
		list, _, err := c.Event().List("", &api.QueryOptions{Token: t.SecretID})
		if err != nil {
			return err
		}
		for _, e := range list {
			if e.Name != "gocl-ok" {
				return fmt.Errorf("listed %s without event:read on it", e.Name)
			}
		}
		_, err = c.ACL().TokenDelete(t.AccessorID, nil)
		return expect(len(list) >= 1 && err == nil, "list %v %v", list, err)
	})
	step("acl: every agent token kind, unknown kinds refused", func() error {
		a := c.Agent()
		for name, f := range map[string]func(string, *api.WriteOptions) (*api.WriteMeta, error){
			"replication":  a.UpdateReplicationACLToken,
			"recovery":     a.UpdateAgentRecoveryACLToken,
			"master":       a.UpdateAgentMasterACLToken,
			"config-file":  a.UpdateConfigFileRegistrationToken,
			"agent (back)": a.UpdateAgentACLToken,
		} {
			if _, err := f(cfg.Token, nil); err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
		}
		return nil
	})
	step("acl: the default token serves requests without one", func() error {
		anon, err := api.NewClient(&api.Config{Address: cfg.Address})
		if err != nil {
			return err
		}
		// an earlier step left the default token set to a token since deleted: as in Consul,
		// requests without a token then get "ACL not found"
		if _, _, err := anon.KV().Get("gocl/a", nil); err == nil || !strings.Contains(err.Error(), "ACL not found") {
			return fmt.Errorf("default token deleted: %v", err)
		}
		if _, err := c.Agent().UpdateDefaultACLToken("", nil); err != nil {
			return err
		}
		if _, _, err := anon.KV().Get("gocl/a", nil); err == nil || !strings.Contains(err.Error(), "Permission denied") {
			return fmt.Errorf("anonymous read: %v", err)
		}
		if _, err := c.Agent().UpdateDefaultACLToken(cfg.Token, nil); err != nil {
			return err
		}
		p, _, err := anon.KV().Get("gocl/a", nil)
		if err != nil || p == nil {
			return fmt.Errorf("with the default token: %+v %v", p, err)
		}
		if _, err := c.Agent().UpdateDefaultACLToken("", nil); err != nil {
			return err
		}
		_, _, err = anon.KV().Get("gocl/a", nil)
		return expect(err != nil && strings.Contains(err.Error(), "Permission denied"), "cleared default token: %v", err)
	})
}

func aclFlow(c *api.Client, cfg *api.Config) {
	a := c.ACL()
	var policy *api.ACLPolicy
	var role *api.ACLRole
	var token *api.ACLToken
	step("acl: policy create/read/read by name/list/update", func() error {
		var err error
		policy, _, err = a.PolicyCreate(&api.ACLPolicy{Name: "gocl-read", Description: "read gocl/", Rules: `key_prefix "gocl/" { policy = "read" }`}, nil)
		if err != nil {
			return err
		}
		read, _, err := a.PolicyRead(policy.ID, nil)
		if err != nil {
			return err
		}
		byName, _, err := a.PolicyReadByName("gocl-read", nil)
		if err != nil {
			return err
		}
		list, _, err := a.PolicyList(nil)
		if err != nil {
			return err
		}
		policy.Description = "read gocl/ (updated)"
		updated, _, err := a.PolicyUpdate(policy, nil)
		if err != nil {
			return err
		}
		return expect(read.Rules == policy.Rules && byName.ID == policy.ID && len(list) >= 2 && updated.Description == policy.Description,
			"read %+v byName %+v list %d", read, byName, len(list))
	})
	step("acl: role create/read/read by name/list", func() error {
		var err error
		role, _, err = a.RoleCreate(&api.ACLRole{Name: "gocl-role", Policies: []*api.ACLRolePolicyLink{{ID: policy.ID}}}, nil)
		if err != nil {
			return err
		}
		read, _, err := a.RoleRead(role.ID, nil)
		if err != nil {
			return err
		}
		byName, _, err := a.RoleReadByName("gocl-role", nil)
		if err != nil {
			return err
		}
		list, _, err := a.RoleList(nil)
		if err != nil {
			return err
		}
		return expect(read != nil && len(read.Policies) == 1 && read.Policies[0].Name == "gocl-read" && byName.ID == role.ID && len(list) == 1,
			"read %+v byName %+v list %d", read, byName, len(list))
	})
	step("acl: token create with role and expiry, read, self, list", func() error {
		var err error
		token, _, err = a.TokenCreate(&api.ACLToken{Description: "gocl", Roles: []*api.ACLTokenRoleLink{{Name: "gocl-role"}}, ExpirationTTL: time.Hour}, nil)
		if err != nil {
			return err
		}
		if token.ExpirationTime == nil || time.Until(*token.ExpirationTime) < 59*time.Minute {
			return fmt.Errorf("expiration %v", token.ExpirationTime)
		}
		read, _, err := a.TokenRead(token.AccessorID, nil)
		if err != nil {
			return err
		}
		self, _, err := a.TokenReadSelf(&api.QueryOptions{Token: token.SecretID})
		if err != nil {
			return err
		}
		list, _, err := a.TokenList(nil)
		if err != nil {
			return err
		}
		found := false
		for _, t := range list {
			if t.AccessorID == token.AccessorID && t.ExpirationTime != nil {
				found = true
			}
		}
		return expect(read.SecretID == token.SecretID && self.AccessorID == token.AccessorID && found, "read %+v self %+v listed %v", read, self, found)
	})
	step("acl: token reads gocl/ and is denied a write", func() error {
		q := &api.QueryOptions{Token: token.SecretID}
		p, _, err := c.KV().Get("gocl/a", q)
		if err != nil || p == nil {
			return fmt.Errorf("read: %+v %v", p, err)
		}
		_, err = c.KV().Put(&api.KVPair{Key: "gocl/a", Value: []byte("no")}, &api.WriteOptions{Token: token.SecretID})
		return expect(err != nil && strings.Contains(err.Error(), "Permission denied"), "write: %v", err)
	})
	step("acl: unknown token is ACL not found", func() error {
		_, _, err := c.KV().Get("gocl/a", &api.QueryOptions{Token: "00000000-0000-0000-0000-000000000001"})
		return expect(err != nil && strings.Contains(err.Error(), "ACL not found"), "got %v", err)
	})
	step("acl: token clone, update, delete", func() error {
		clone, _, err := a.TokenClone(token.AccessorID, "gocl clone", nil)
		if err != nil {
			return err
		}
		if clone.AccessorID == token.AccessorID || len(clone.Roles) != 1 || clone.Description != "gocl clone" || clone.ExpirationTime == nil {
			return fmt.Errorf("clone %+v", clone)
		}
		clone.Description = "gocl clone updated"
		clone.Policies = []*api.ACLTokenPolicyLink{{Name: "gocl-read"}}
		updated, _, err := a.TokenUpdate(clone, nil)
		if err != nil {
			return err
		}
		if _, err := a.TokenDelete(clone.AccessorID, nil); err != nil {
			return err
		}
		_, _, err = a.TokenRead(clone.AccessorID, nil)
		return expect(updated.Description == "gocl clone updated" && len(updated.Policies) == 1 && err != nil, "updated %+v read after delete %v", updated, err)
	})
	step("acl: agent token update", func() error {
		if _, err := c.Agent().UpdateDefaultACLToken(token.SecretID, nil); err != nil {
			return err
		}
		if _, err := c.Agent().UpdateAgentACLToken(cfg.Token, nil); err != nil {
			return err
		}
		_, err := c.Agent().UpdateDefaultACLToken("x", &api.WriteOptions{Token: token.SecretID})
		return expect(err != nil && strings.Contains(err.Error(), "Permission denied"), "without acl write: %v", err)
	})
	step("acl: auth method and binding rule create/read/list/update/delete, login refused", func() error {
		cfgK8s := map[string]interface{}{"Host": "https://k8s.example:443", "CACert": "pem", "ServiceAccountJWT": "jwt"}
		m, _, err := a.AuthMethodCreate(&api.ACLAuthMethod{Name: "gocl-kube", Type: "kubernetes", MaxTokenTTL: 10 * time.Minute, Config: cfgK8s}, nil)
		if err != nil {
			return err
		}
		if _, _, err := a.AuthMethodCreate(&api.ACLAuthMethod{Name: "gocl-bad", Type: "kubernetes"}, nil); err == nil {
			return fmt.Errorf("a kubernetes method without its configuration was accepted")
		}
		read, _, err := a.AuthMethodRead("gocl-kube", nil)
		if err != nil || read == nil {
			return fmt.Errorf("read %+v %v", read, err)
		}
		list, _, err := a.AuthMethodList(nil)
		if err != nil {
			return err
		}
		m.Description = "updated"
		if _, _, err := a.AuthMethodUpdate(m, nil); err != nil {
			return err
		}
		rule, _, err := a.BindingRuleCreate(&api.ACLBindingRule{AuthMethod: "gocl-kube", BindType: api.BindingRuleBindTypeService, BindName: "${serviceaccount.name}", Selector: "serviceaccount.namespace==default"}, nil)
		if err != nil {
			return err
		}
		rules, _, err := a.BindingRuleList("gocl-kube", nil)
		if err != nil {
			return err
		}
		_, _, loginErr := a.Login(&api.ACLLoginParams{AuthMethod: "gocl-kube", BearerToken: "eyJ.x.y"}, nil)
		if _, err := a.AuthMethodDelete("gocl-kube", nil); err != nil {
			return err
		}
		gone, _, err := a.BindingRuleRead(rule.ID, nil)
		return expect(read.MaxTokenTTL == 10*time.Minute && read.Config["Host"] == "https://k8s.example:443" && len(list) == 1 &&
			len(rules) == 1 && rules[0].ID == rule.ID && loginErr != nil && strings.Contains(loginErr.Error(), "Permission denied") &&
			err == nil && gone == nil,
			"read %+v list %d rules %d login %v gone %+v %v", read, len(list), len(rules), loginErr, gone, err)
	})
	step("acl: role and policy delete", func() error {
		if _, err := a.TokenDelete(token.AccessorID, nil); err != nil {
			return err
		}
		if _, err := a.RoleDelete(role.ID, nil); err != nil {
			return err
		}
		if _, err := a.PolicyDelete(policy.ID, nil); err != nil {
			return err
		}
		r, _, err := a.RoleRead(role.ID, nil)
		return expect(err == nil && r == nil, "role after delete %+v %v", r, err)
	})
}
