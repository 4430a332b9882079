//! A small asynchronous Kafka admin client on the wire protocol (`kafka-protocol`), for what
//! librdkafka's admin API does not offer or offers only one partition or one group at a time:
//! the KRaft quorum (`DescribeQuorum`), cluster metadata, watermarks of many partitions in one
//! request per leader (`ListOffsets`), committed offsets of many groups in one request per
//! coordinator (`FindCoordinator`, `OffsetFetch`), groups (`ListGroups`, `DescribeGroups`) and topic
//! configurations (`DescribeConfigs`).
//!
//! One connection per broker, opened on first use and reopened after an error; one request at a
//! time on each; every call bounded by the request timeout. Nothing here writes to Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    describe_configs_request, describe_quorum_request, list_offsets_request, offset_fetch_request,
    ApiKey, BrokerId, DescribeConfigsRequest, DescribeConfigsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, DescribeQuorumRequest, DescribeQuorumResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetFetchRequest,
    OffsetFetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Largest response accepted (a metadata response of a big cluster is well below this).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("{broker}: {source}")]
    Io {
        broker: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{broker}: no answer within {timeout:?}")]
    Timeout { broker: String, timeout: Duration },
    #[error("{broker}: cannot encode or decode {api:?}: {message}")]
    Protocol {
        broker: String,
        api: ApiKey,
        message: String,
    },
    #[error("no broker answered: {0}")]
    NoBroker(String),
    #[error("Kafka error code {code} {context}")]
    Kafka { code: i16, context: String },
}

/// The broker addresses of the cluster: the bootstrap list until metadata tells the node ids.
#[derive(Debug, Default)]
struct Brokers {
    by_id: BTreeMap<i32, String>,
}

/// The client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Wire {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bootstrap: Vec<String>,
    timeout: Duration,
    correlation: AtomicI32,
    connections: StdMutex<HashMap<String, Arc<Mutex<Option<TcpStream>>>>>,
    brokers: StdMutex<Brokers>,
    /// Requests sent since start (every call, answered or not).
    requests: AtomicU64,
    /// Each group's coordinator and when it was found.
    coordinators: StdMutex<BTreeMap<String, (String, Instant)>>,
    /// Each partition's earliest offset and when it was asked.
    lows: StdMutex<BTreeMap<(String, i32), (i64, Instant)>>,
}

/// How long a group's coordinator is trusted without asking again (an error asks at once).
const COORDINATOR_TTL: Duration = Duration::from_secs(30);
/// Kafka error codes that mean "ask for the coordinator again".
const COORDINATOR_MOVED: [i16; 3] = [
    14, // COORDINATOR_LOAD_IN_PROGRESS
    15, // COORDINATOR_NOT_AVAILABLE
    16, // NOT_COORDINATOR
];

/// Versions used: all supported by Kafka 3.7 and later (the stack runs 4.3).
const METADATA_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
const FIND_COORDINATOR_VERSION: i16 = 4;
const OFFSET_FETCH_VERSION: i16 = 8;
const DESCRIBE_QUORUM_VERSION: i16 = 2;
const LIST_GROUPS_VERSION: i16 = 4;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
const DESCRIBE_CONFIGS_VERSION: i16 = 4;

/// `ListOffsets` timestamps that mean "the end" and "the start".
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// Every partition of `topics` the metadata knows.
fn partitions_of(metadata: &Metadata, topics: &[&str]) -> Vec<(String, i32)> {
    topics
        .iter()
        .filter_map(|t| metadata.topic(t))
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.id)))
        .collect()
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

impl Wire {
    pub fn new(bootstrap: &str, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                bootstrap: bootstrap
                    .split(',')
                    .map(|b| b.trim().to_owned())
                    .filter(|b| !b.is_empty())
                    .collect(),
                timeout,
                correlation: AtomicI32::new(1),
                connections: StdMutex::new(HashMap::new()),
                brokers: StdMutex::new(Brokers::default()),
                requests: AtomicU64::new(0),
                coordinators: StdMutex::new(BTreeMap::new()),
                lows: StdMutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Requests sent to the brokers since this client was made.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    fn connection(&self, broker: &str) -> Arc<Mutex<Option<TcpStream>>> {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        connections.entry(broker.to_owned()).or_default().clone()
    }

    /// The address of a node id, as the last metadata said.
    pub fn address_of(&self, node: i32) -> Option<String> {
        self.inner
            .brokers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .get(&node)
            .cloned()
    }

    /// One request to `broker` (`host:port`) and its response, within the timeout.
    pub async fn call<Req, Resp>(
        &self,
        broker: &str,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, WireError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let timeout = self.inner.timeout;
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let slot = self.connection(broker);
        let mut guard = slot.lock().await;
        let outcome = tokio::time::timeout(
            timeout,
            self.exchange::<Req, Resp>(&mut guard, broker, api, version, request),
        )
        .await;
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                *guard = None;
                Err(error)
            }
            Err(_) => {
                *guard = None;
                Err(WireError::Timeout {
                    broker: broker.to_owned(),
                    timeout,
                })
            }
        }
    }

    async fn exchange<Req, Resp>(
        &self,
        connection: &mut Option<TcpStream>,
        broker: &str,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, WireError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let io = |source| WireError::Io {
            broker: broker.to_owned(),
            source,
        };
        let protocol = |message: String| WireError::Protocol {
            broker: broker.to_owned(),
            api,
            message,
        };
        let correlation = self.inner.correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("cdc-console")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, Req::header_version(version))
            .map_err(|e| protocol(e.to_string()))?;
        request
            .encode(&mut body, version)
            .map_err(|e| protocol(e.to_string()))?;
        let length = i32::try_from(body.len()).map_err(|e| protocol(e.to_string()))?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(length);
        frame.extend_from_slice(&body);

        if connection.is_none() {
            let stream = TcpStream::connect(broker).await.map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            *connection = Some(stream);
        }
        let Some(stream) = connection.as_mut() else {
            return Err(protocol("no connection".to_owned()));
        };
        stream.write_all(&frame).await.map_err(io)?;
        let size = stream.read_i32().await.map_err(io)?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| protocol(format!("response size {size}")))?;
        let mut buffer = vec![0_u8; size];
        stream.read_exact(&mut buffer).await.map_err(io)?;
        let mut buffer = Bytes::from(buffer);
        let response_header = ResponseHeader::decode(&mut buffer, Resp::header_version(version))
            .map_err(|e| protocol(e.to_string()))?;
        if response_header.correlation_id != correlation {
            return Err(protocol(format!(
                "correlation id {} for request {correlation}",
                response_header.correlation_id
            )));
        }
        let response = Resp::decode(&mut buffer, version).map_err(|e| protocol(e.to_string()))?;
        if buffer.has_remaining() {
            tracing::debug!(
                ?api,
                left = buffer.remaining(),
                "response longer than decoded"
            );
        }
        Ok(response)
    }

    /// Candidates for a cluster-wide request: known brokers first, then the bootstrap list.
    fn candidates(&self) -> Vec<String> {
        let mut list: Vec<String> = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .values()
            .cloned()
            .collect();
        for b in &self.inner.bootstrap {
            if !list.contains(b) {
                list.push(b.clone());
            }
        }
        list
    }

    /// A request any broker can answer: tried on each broker in turn until one answers.
    async fn any<Req, Resp>(
        &self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<(String, Resp), WireError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let mut errors = Vec::new();
        for broker in self.candidates() {
            match self.call(&broker, api, version, request).await {
                Ok(response) => return Ok((broker, response)),
                Err(error) => errors.push(error.to_string()),
            }
        }
        Err(WireError::NoBroker(errors.join("; ")))
    }

    /// Cluster metadata of every topic (or of `topics`).
    pub async fn metadata(&self, topics: Option<&[String]>) -> Result<Metadata, WireError> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|name| {
                        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(str_bytes(name))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let (_, response): (_, MetadataResponse) = self
            .any(ApiKey::Metadata, METADATA_VERSION, &request)
            .await?;
        let metadata = Metadata::from(response);
        let mut brokers = self.inner.brokers.lock().unwrap_or_else(|p| p.into_inner());
        brokers.by_id = metadata
            .brokers
            .iter()
            .map(|b| (b.id, format!("{}:{}", b.host, b.port)))
            .collect();
        Ok(metadata)
    }

    /// Offsets at `timestamp` ([`LATEST`], [`EARLIEST`] or milliseconds) of the given partitions,
    /// asked of each partition's leader (one request per leader). Partitions whose leader is
    /// unknown or did not answer are left out.
    pub async fn list_offsets(
        &self,
        metadata: &Metadata,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> BTreeMap<(String, i32), i64> {
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for (topic, partition) in partitions {
            if let Some(leader) = metadata.leader(topic, *partition) {
                by_leader
                    .entry(leader)
                    .or_default()
                    .entry(topic.clone())
                    .or_default()
                    .push(*partition);
            }
        }
        let calls = by_leader.into_iter().filter_map(|(leader, topics)| {
            let broker = metadata.address(leader)?;
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(0)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(topic, partitions)| {
                            list_offsets_request::ListOffsetsTopic::default()
                                .with_name(TopicName(str_bytes(&topic)))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|p| {
                                            list_offsets_request::ListOffsetsPartition::default()
                                                .with_partition_index(p)
                                                .with_current_leader_epoch(-1)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            Some(async move {
                let response: Result<ListOffsetsResponse, _> = self
                    .call(&broker, ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)
                    .await;
                response
            })
        });
        let mut offsets = BTreeMap::new();
        for response in futures::future::join_all(calls).await {
            match response {
                Ok(response) => {
                    for topic in response.topics {
                        for p in topic.partitions {
                            if p.error_code == 0 {
                                offsets.insert(
                                    (topic.name.0.to_string(), p.partition_index),
                                    p.offset,
                                );
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(error = %error, "ListOffsets failed"),
            }
        }
        offsets
    }

    /// Low and high watermarks of every partition of `topics`.
    pub async fn watermarks(
        &self,
        metadata: &Metadata,
        topics: &[&str],
    ) -> BTreeMap<(String, i32), Watermarks> {
        let partitions = partitions_of(metadata, topics);
        let (low, high) = tokio::join!(
            self.list_offsets(metadata, &partitions, EARLIEST),
            self.list_offsets(metadata, &partitions, LATEST)
        );
        partitions
            .into_iter()
            .filter_map(|key| {
                let low = *low.get(&key)?;
                let high = *high.get(&key)?;
                Some((key, Watermarks { low, high }))
            })
            .collect()
    }

    /// [`Self::watermarks`] asking for earliest offsets only when the one known for a partition
    /// is older than `lows_max_age`: they move only when retention or a deletion removes records,
    /// while the latest move with every write. Messages counted from a remembered low can be
    /// too many by what retention removed since, for at most `lows_max_age`.
    pub async fn watermarks_remembering_lows(
        &self,
        metadata: &Metadata,
        topics: &[&str],
        lows_max_age: Duration,
    ) -> BTreeMap<(String, i32), Watermarks> {
        let partitions = partitions_of(metadata, topics);
        let stale: Vec<(String, i32)> = {
            let lows = self.inner.lows.lock().unwrap_or_else(|p| p.into_inner());
            partitions
                .iter()
                .filter(|key| {
                    lows.get(*key)
                        .is_none_or(|(_, at)| at.elapsed() >= lows_max_age)
                })
                .cloned()
                .collect()
        };
        let (fresh_lows, high) = tokio::join!(
            async {
                if stale.is_empty() {
                    BTreeMap::new()
                } else {
                    self.list_offsets(metadata, &stale, EARLIEST).await
                }
            },
            self.list_offsets(metadata, &partitions, LATEST)
        );
        let mut lows = self.inner.lows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for (key, low) in fresh_lows {
            lows.insert(key, (low, now));
        }
        partitions
            .into_iter()
            .filter_map(|key| {
                let low = lows.get(&key)?.0;
                let high = *high.get(&key)?;
                // A remembered low can pass a high that went back (a topic deleted and made again).
                Some((
                    key,
                    Watermarks {
                        low: low.min(high),
                        high,
                    },
                ))
            })
            .collect()
    }

    /// The coordinator of each group: node id and address.
    async fn coordinators(&self, groups: &[String]) -> Result<BTreeMap<String, String>, WireError> {
        let request = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(groups.iter().map(|g| str_bytes(g)).collect());
        let (_, response): (_, FindCoordinatorResponse) = self
            .any(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, &request)
            .await?;
        Ok(response
            .coordinators
            .into_iter()
            .filter(|c| c.error_code == 0)
            .map(|c| (c.key.to_string(), format!("{}:{}", c.host, c.port)))
            .collect())
    }

    /// The coordinator of each group, from what is remembered when it is younger than
    /// [`COORDINATOR_TTL`] (or asked again when `fresh`).
    async fn coordinators_remembered(
        &self,
        groups: &[String],
        fresh: bool,
    ) -> Result<BTreeMap<String, String>, WireError> {
        let mut found = BTreeMap::new();
        let mut missing = Vec::new();
        {
            let known = self
                .inner
                .coordinators
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for group in groups {
                match known.get(group) {
                    Some((broker, at)) if !fresh && at.elapsed() < COORDINATOR_TTL => {
                        found.insert(group.clone(), broker.clone());
                    }
                    _ => missing.push(group.clone()),
                }
            }
        }
        if !missing.is_empty() {
            let asked = self.coordinators(&missing).await?;
            let mut known = self
                .inner
                .coordinators
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for (group, broker) in asked {
                known.insert(group.clone(), (broker.clone(), now));
                found.insert(group, broker);
            }
        }
        Ok(found)
    }

    /// Committed offsets of every partition each group has committed, asked of each group's
    /// coordinator (one request per coordinator for all its groups). Coordinators are remembered
    /// for [`COORDINATOR_TTL`]; when one does not answer or says it no longer coordinates a
    /// group, they are asked for again and the offsets asked once more.
    pub async fn committed(
        &self,
        groups: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<(String, i32), i64>>, WireError> {
        if groups.is_empty() {
            return Ok(BTreeMap::new());
        }
        match self.committed_once(groups, false).await {
            Ok(committed) => Ok(committed),
            Err(error) => {
                tracing::debug!(error = %error, "committed offsets: asking for coordinators again");
                self.committed_once(groups, true).await
            }
        }
    }

    async fn committed_once(
        &self,
        groups: &[String],
        fresh: bool,
    ) -> Result<BTreeMap<String, BTreeMap<(String, i32), i64>>, WireError> {
        let coordinators = self.coordinators_remembered(groups, fresh).await?;
        let mut by_coordinator: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (group, broker) in coordinators {
            by_coordinator.entry(broker).or_default().push(group);
        }
        let calls = by_coordinator.into_iter().map(|(broker, groups)| {
            let request = OffsetFetchRequest::default()
                .with_groups(
                    groups
                        .iter()
                        .map(|g| {
                            offset_fetch_request::OffsetFetchRequestGroup::default()
                                .with_group_id(GroupId(str_bytes(g)))
                                .with_topics(None)
                        })
                        .collect(),
                )
                .with_require_stable(false);
            async move {
                let response: Result<OffsetFetchResponse, _> = self
                    .call(&broker, ApiKey::OffsetFetch, OFFSET_FETCH_VERSION, &request)
                    .await;
                response
            }
        });
        let mut committed: BTreeMap<String, BTreeMap<(String, i32), i64>> = BTreeMap::new();
        for response in futures::future::join_all(calls).await {
            let response = response?;
            for group in response.groups {
                if COORDINATOR_MOVED.contains(&group.error_code) {
                    return Err(WireError::Kafka {
                        code: group.error_code,
                        context: format!("fetching offsets of group `{}`", group.group_id.0),
                    });
                }
                if group.error_code != 0 {
                    continue;
                }
                let entry = committed.entry(group.group_id.0.to_string()).or_default();
                for topic in group.topics {
                    for p in topic.partitions {
                        if p.error_code == 0 && p.committed_offset >= 0 {
                            entry.insert(
                                (topic.name.0.to_string(), p.partition_index),
                                p.committed_offset,
                            );
                        }
                    }
                }
            }
        }
        Ok(committed)
    }

    /// The KRaft quorum of `__cluster_metadata`.
    pub async fn quorum(&self) -> Result<Quorum, WireError> {
        let request = DescribeQuorumRequest::default().with_topics(vec![
            describe_quorum_request::TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
                .with_partitions(vec![
                    describe_quorum_request::PartitionData::default().with_partition_index(0)
                ]),
        ]);
        let (_, response): (_, DescribeQuorumResponse) = self
            .any(ApiKey::DescribeQuorum, DESCRIBE_QUORUM_VERSION, &request)
            .await?;
        if response.error_code != 0 {
            return Err(WireError::Kafka {
                code: response.error_code,
                context: "describing the quorum".to_owned(),
            });
        }
        let partition = response
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or_else(|| WireError::Kafka {
                code: -1,
                context: "no quorum partition in the answer".to_owned(),
            })?;
        let leader_end = partition
            .current_voters
            .iter()
            .find(|v| v.replica_id == partition.leader_id)
            .map(|v| v.log_end_offset);
        let replica =
            |v: &kafka_protocol::messages::describe_quorum_response::ReplicaState| QuorumReplica {
                id: v.replica_id.0,
                log_end_offset: v.log_end_offset,
                lag: leader_end.map(|end| (end - v.log_end_offset).max(0)),
                last_fetch_ms: (v.last_fetch_timestamp >= 0).then_some(v.last_fetch_timestamp),
                last_caught_up_ms: (v.last_caught_up_timestamp >= 0)
                    .then_some(v.last_caught_up_timestamp),
            };
        Ok(Quorum {
            leader: partition.leader_id.0,
            epoch: partition.leader_epoch,
            high_watermark: partition.high_watermark,
            voters: partition.current_voters.iter().map(replica).collect(),
            observers: partition.observers.iter().map(replica).collect(),
        })
    }

    /// Every group each broker coordinates, with its state and protocol type.
    pub async fn list_groups(&self, metadata: &Metadata) -> Result<Vec<GroupListing>, WireError> {
        let request = ListGroupsRequest::default();
        let calls = metadata.brokers.iter().map(|b| {
            let broker = format!("{}:{}", b.host, b.port);
            let request = request.clone();
            async move {
                let response: Result<ListGroupsResponse, _> = self
                    .call(&broker, ApiKey::ListGroups, LIST_GROUPS_VERSION, &request)
                    .await;
                response
            }
        });
        let mut groups = Vec::new();
        let mut answered = false;
        let mut errors = Vec::new();
        for response in futures::future::join_all(calls).await {
            match response {
                Ok(response) => {
                    answered = true;
                    groups.extend(response.groups.into_iter().map(|g| GroupListing {
                        id: g.group_id.0.to_string(),
                        state: g.group_state.to_string(),
                        protocol_type: g.protocol_type.to_string(),
                    }));
                }
                Err(error) => errors.push(error.to_string()),
            }
        }
        if !answered {
            return Err(WireError::NoBroker(errors.join("; ")));
        }
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        groups.dedup_by(|a, b| a.id == b.id);
        Ok(groups)
    }

    /// A group's state, members and their assignments, asked of its coordinator.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, WireError> {
        let coordinators = self.coordinators(&[group.to_owned()]).await?;
        let broker = coordinators.get(group).ok_or_else(|| WireError::Kafka {
            code: 15,
            context: format!("no coordinator for group `{group}`"),
        })?;
        let request = DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(str_bytes(group))])
            .with_include_authorized_operations(false);
        let response: DescribeGroupsResponse = self
            .call(
                broker,
                ApiKey::DescribeGroups,
                DESCRIBE_GROUPS_VERSION,
                &request,
            )
            .await?;
        let described = response
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| WireError::Kafka {
                code: -1,
                context: format!("group `{group}` missing in the answer"),
            })?;
        if described.error_code != 0 {
            return Err(WireError::Kafka {
                code: described.error_code,
                context: format!("describing group `{group}`"),
            });
        }
        let consumer = described.protocol_type.as_str() == "consumer";
        Ok(GroupDescription {
            id: group.to_owned(),
            state: described.group_state.to_string(),
            protocol_type: described.protocol_type.to_string(),
            protocol: described.protocol_data.to_string(),
            coordinator: broker.clone(),
            members: described
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment: if consumer {
                        decode_assignment(&m.member_assignment)
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        })
    }

    /// A topic's configuration entries; sensitive values are dropped here already.
    pub async fn topic_configs(&self, topic: &str) -> Result<Vec<ConfigEntry>, WireError> {
        let request = DescribeConfigsRequest::default()
            .with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(str_bytes(topic))
                    .with_configuration_keys(None),
            ])
            .with_include_synonyms(false)
            .with_include_documentation(false);
        let (_, response): (_, DescribeConfigsResponse) = self
            .any(ApiKey::DescribeConfigs, DESCRIBE_CONFIGS_VERSION, &request)
            .await?;
        let result = response
            .results
            .into_iter()
            .next()
            .ok_or_else(|| WireError::Kafka {
                code: -1,
                context: format!("no configuration for `{topic}` in the answer"),
            })?;
        if result.error_code != 0 {
            return Err(WireError::Kafka {
                code: result.error_code,
                context: format!("describing the configuration of `{topic}`"),
            });
        }
        let mut entries: Vec<ConfigEntry> = result
            .configs
            .into_iter()
            .map(|c| {
                let name = c.name.to_string();
                let sensitive = c.is_sensitive || crate::redact::is_secret_key(&name);
                ConfigEntry {
                    value: if sensitive {
                        Some(crate::redact::REDACTED.to_owned())
                    } else {
                        c.value.map(|v| v.to_string())
                    },
                    name,
                    // 1 = set on the topic; 4 = static broker, 5 = default broker, 6 = default.
                    is_default: c.config_source != 1,
                    read_only: c.read_only,
                }
            })
            .collect();
        entries.sort_by(|a, b| a.is_default.cmp(&b.is_default).then(a.name.cmp(&b.name)));
        Ok(entries)
    }
}

/// A consumer's assignment (`ConsumerProtocolAssignment`): version, then topics with their
/// partitions. Anything that does not parse is shown as no assignment.
pub fn decode_assignment(bytes: &[u8]) -> Vec<(String, Vec<i32>)> {
    fn parse(mut buf: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
        if buf.remaining() < 6 {
            return None;
        }
        let _version = buf.get_i16();
        let topics = buf.get_i32();
        let mut out = Vec::new();
        for _ in 0..topics.max(0) {
            if buf.remaining() < 2 {
                return None;
            }
            let length = usize::try_from(buf.get_i16()).ok()?;
            if buf.remaining() < length + 4 {
                return None;
            }
            let name = String::from_utf8(buf[..length].to_vec()).ok()?;
            buf.advance(length);
            let count = buf.get_i32();
            let mut partitions = Vec::new();
            for _ in 0..count.max(0) {
                if buf.remaining() < 4 {
                    return None;
                }
                partitions.push(buf.get_i32());
            }
            partitions.sort_unstable();
            out.push((name, partitions));
        }
        Some(out)
    }
    parse(bytes).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

impl Watermarks {
    pub fn messages(&self) -> i64 {
        (self.high - self.low).max(0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub id: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
    pub error_code: i16,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    pub name: String,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
    pub error_code: i16,
}

impl TopicInfo {
    pub fn replication_factor(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.replicas.len())
            .max()
            .unwrap_or(0)
    }

    pub fn under_replicated(&self) -> usize {
        self.partitions
            .iter()
            .filter(|p| p.isr.len() < p.replicas.len())
            .count()
    }

    pub fn offline(&self) -> usize {
        self.partitions.iter().filter(|p| p.leader < 0).count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicInfo>,
}

impl Metadata {
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|t| t.name == name)
    }

    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.topic(topic)?
            .partitions
            .iter()
            .find(|p| p.id == partition)
            .map(|p| p.leader)
            .filter(|l| *l >= 0)
    }

    pub fn address(&self, node: i32) -> Option<String> {
        self.brokers
            .iter()
            .find(|b| b.id == node)
            .map(|b| format!("{}:{}", b.host, b.port))
    }
}

impl From<MetadataResponse> for Metadata {
    fn from(response: MetadataResponse) -> Self {
        let mut brokers: Vec<BrokerInfo> = response
            .brokers
            .into_iter()
            .map(|b| BrokerInfo {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.map(|r| r.to_string()),
            })
            .collect();
        brokers.sort_by_key(|b| b.id);
        let mut topics: Vec<TopicInfo> = response
            .topics
            .into_iter()
            .filter_map(|t| {
                let name = t.name?.0.to_string();
                let mut partitions: Vec<PartitionInfo> = t
                    .partitions
                    .into_iter()
                    .map(|p| PartitionInfo {
                        id: p.partition_index,
                        leader: p.leader_id.0,
                        replicas: p.replica_nodes.iter().map(|n| n.0).collect(),
                        isr: p.isr_nodes.iter().map(|n| n.0).collect(),
                        offline: p.offline_replicas.iter().map(|n| n.0).collect(),
                        error_code: p.error_code,
                    })
                    .collect();
                partitions.sort_by_key(|p| p.id);
                Some(TopicInfo {
                    internal: t.is_internal || name.starts_with("__"),
                    name,
                    partitions,
                    error_code: t.error_code,
                })
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            cluster_id: response.cluster_id.map(|c| c.to_string()),
            controller_id: response.controller_id.0,
            brokers,
            topics,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QuorumReplica {
    pub id: i32,
    pub log_end_offset: i64,
    /// Records behind the leader's log end.
    pub lag: Option<i64>,
    pub last_fetch_ms: Option<i64>,
    pub last_caught_up_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quorum {
    pub leader: i32,
    pub epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<QuorumReplica>,
    pub observers: Vec<QuorumReplica>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupListing {
    pub id: String,
    pub state: String,
    pub protocol_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub assignment: Vec<(String, Vec<i32>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupDescription {
    pub id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub coordinator: String,
    pub members: Vec<GroupMember>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub is_default: bool,
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_consumer_assignment() {
        let mut bytes = BytesMut::new();
        bytes.put_i16(3);
        bytes.put_i32(1);
        bytes.put_i16(6);
        bytes.put_slice(b"orders");
        bytes.put_i32(2);
        bytes.put_i32(4);
        bytes.put_i32(1);
        bytes.put_i32(-1); // user data: null
        assert_eq!(
            decode_assignment(&bytes),
            vec![("orders".to_owned(), vec![1, 4])]
        );
        assert!(decode_assignment(&[0, 1]).is_empty());
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 1, 0, 9, b'x']).is_empty());
    }
}
