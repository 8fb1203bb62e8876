// The ZooKeeper side of bench/meta-vs-zookeeper: the same workload as `starling bench meta`
// (C clients' writes in flight at once, half creates of 1 KiB znodes, half sets of them; then
// single-client synchronous sets), with ZooKeeper's asynchronous Java client.
import java.util.Arrays;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.zookeeper.AsyncCallback;
import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.ZooDefs;
import org.apache.zookeeper.ZooKeeper;

public class ZkBench {
    public static void main(String[] args) throws Exception {
        String connect = args[0];
        int ops = Integer.parseInt(args[1]);
        int concurrency = Integer.parseInt(args[2]);
        int size = Integer.parseInt(args[3]);
        int syncOps = Integer.parseInt(args[4]);
        CountDownLatch connected = new CountDownLatch(1);
        ZooKeeper zk = new ZooKeeper(connect, 10000, e -> {
            if (e.getState() == org.apache.zookeeper.Watcher.Event.KeeperState.SyncConnected) connected.countDown();
        });
        connected.await();
        String root = "/bench-" + Long.toHexString(System.nanoTime());
        zk.create(root, new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT);
        byte[] value = new byte[size];
        Arrays.fill(value, (byte) 'v');
        int creates = (ops + 1) / 2;
        Semaphore window = new Semaphore(concurrency);
        CountDownLatch done = new CountDownLatch(ops);
        AtomicLong errors = new AtomicLong();
        long[] lat = new long[ops];
        long start = System.nanoTime();
        for (int i = 0; i < ops; i++) {
            window.acquire();
            final int n = i;
            final long t = System.nanoTime();
            if (i < creates) {
                zk.create(String.format("%s/n%010d", root, i), value, ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT,
                    (AsyncCallback.StringCallback) (rc, path, ctx, name) -> {
                        if (rc != 0) errors.incrementAndGet();
                        lat[n] = System.nanoTime() - t;
                        window.release();
                        done.countDown();
                    }, null);
            } else {
                zk.setData(String.format("%s/n%010d", root, (i - creates) % creates), value, -1,
                    (AsyncCallback.StatCallback) (rc, path, ctx, stat) -> {
                        if (rc != 0) errors.incrementAndGet();
                        lat[n] = System.nanoTime() - t;
                        window.release();
                        done.countDown();
                    }, null);
            }
        }
        done.await();
        double secs = (System.nanoTime() - start) / 1e9;
        Arrays.sort(lat);
        System.out.printf("bench zookeeper: 3 servers, %d writes (%d errors), %d in flight, %d B data%n", ops, errors.get(), concurrency, size);
        System.out.printf("  %.0f committed writes/s over %.2f s; latency p50 %.3fms, p99 %.3fms, max %.3fms%n",
            (ops - errors.get()) / secs, secs, lat[ops / 2] / 1e6, lat[(int) (ops * 0.99)] / 1e6, lat[ops - 1] / 1e6);
        if (syncOps > 0) {
            long[] s = new long[syncOps];
            String p = String.format("%s/n%010d", root, 0);
            for (int i = 0; i < syncOps; i++) {
                long t = System.nanoTime();
                zk.setData(p, value, -1);
                s[i] = System.nanoTime() - t;
            }
            Arrays.sort(s);
            System.out.printf("  single client, synchronous: %d writes; latency p50 %.3fms, p99 %.3fms, max %.3fms%n",
                syncOps, s[syncOps / 2] / 1e6, s[(int) (syncOps * 0.99)] / 1e6, s[syncOps - 1] / 1e6);
        }
        zk.close();
    }
}
